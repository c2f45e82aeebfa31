"""Specs into grammars over the model's vocabulary (llguidance), checked and cached.

Compiling runs at intake (``InputProcessor.check_params``), so a schema, regex or grammar
the library refuses is an ``InvalidRequestError`` before any generation. Each sequence
then gets a matcher of its own, copied from the compiled grammar's pristine one.

The token trie every grammar is compiled against is built at the first compile, not with
the engine: for a 152k vocabulary it holds ~115 MiB (a third of a Qwen2-0.5B int4 model's
weights) and takes about a second, which a server that never constrains its outputs
should not pay.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict

import llguidance
import llguidance.hf
from transformers import PreTrainedTokenizerBase

from engine.errors import InvalidRequestError
from engine.structured.matcher import GrammarMatcher
from engine.structured.spec import StructuredOutputSpec

logger = logging.getLogger(__name__)

# Compiled grammars kept for reuse: a server sees the same few schemas again and again
# (one per client program), while a matcher template is a few hundred KB at most.
DEFAULT_CACHE_SIZE = 256

# JSON without free whitespace: a weak model left free to pick whitespace between tokens
# can spend its whole budget on it (a random-weight model does).
JSON_OPTIONS = {"whitespace_flexible": False}


class StructuredOutputError(InvalidRequestError):
    """A constraint the grammar library cannot compile (an invalid schema, regex or
    grammar, or one it does not implement). ``param`` is the spec's ``source``: the
    request field a server names in its error."""

    def __init__(self, message: str, source: str | None = None):
        super().__init__(f"{source}: {message}" if source else message, source)


class CompiledGrammar:
    """One spec's grammar, checked against the vocabulary, with a matcher at its start
    state that every sequence's matcher is copied from."""

    def __init__(self, matcher: llguidance.LLMatcher, eos_token_id: int, num_mask_words: int):
        self._pristine = matcher
        self.eos_token_id = eos_token_id
        self.num_mask_words = num_mask_words
        # NOTE: copies may be taken from several intake threads at once.
        self._lock = threading.Lock()

    def new_matcher(self) -> GrammarMatcher:
        with self._lock:
            matcher = self._pristine.deep_copy()
        return GrammarMatcher(matcher, self.eos_token_id, self.num_mask_words)


class GrammarCompiler:
    """Compiles ``StructuredOutputSpec``s for one tokenizer; thread-safe.

    ``vocab_size`` is the model's (the width of its logits, which may exceed the
    tokenizer's). The one token a finished grammar allows is ``eos_token_id``. The
    token trie is built by the first ``compile`` (see the module's docstring).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        eos_token_id: int,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ):
        self._hf_tokenizer = tokenizer
        self._num_tokens = max(vocab_size, len(tokenizer))
        self.eos_token_id = eos_token_id
        self.cache_size = cache_size
        self._cache: OrderedDict[StructuredOutputSpec, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.num_compiled = 0
        self._trie: llguidance.LLTokenizer | None = None
        self._trie_error: str | None = None  # why the trie cannot be built, once tried
        # NOTE: held through the build, so concurrent first requests wait for one build.
        self._trie_lock = threading.Lock()

    def compile(self, spec: StructuredOutputSpec) -> CompiledGrammar:
        """The spec's grammar, from the cache when it was compiled before. Raises
        StructuredOutputError naming the problem."""
        with self._lock:
            compiled = self._cache.get(spec)
            if compiled is not None:
                self._cache.move_to_end(spec)
                return compiled
        trie = self._token_trie()
        num_mask_words = -(-trie.vocab_size // 32)
        # Outside the lock: a large grammar takes a while, and llguidance drops the GIL.
        compiled = CompiledGrammar(self._matcher(spec, trie), self.eos_token_id, num_mask_words)
        with self._lock:
            self.num_compiled += 1
            self._cache[spec] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _token_trie(self) -> llguidance.LLTokenizer:
        """The trie the masks are computed over, built at the first call. Raises
        InvalidRequestError when the tokenizer cannot drive a grammar (llguidance needs
        a fast one)."""
        with self._trie_lock:
            if self._trie is None and self._trie_error is None:
                # NOTE: reads the intake tokenizer outside intake's lock: it is only
                # copied, and intake never changes its truncation or padding (the writes).
                try:
                    self._trie = llguidance.hf.from_tokenizer(
                        self._hf_tokenizer, n_vocab=self._num_tokens, eos_token=self.eos_token_id
                    )
                except ValueError as e:
                    logger.warning("structured outputs are off: %s", e)
                    self._trie_error = str(e)
            if self._trie is None:
                raise InvalidRequestError(
                    f"structured outputs are off for this model: {self._trie_error}"
                )
            return self._trie

    @staticmethod
    def _matcher(spec: StructuredOutputSpec, trie: llguidance.LLTokenizer) -> llguidance.LLMatcher:
        grammar = _grammar(spec)
        error = llguidance.LLMatcher.validate_grammar(grammar, trie)
        if error:
            raise StructuredOutputError(f"invalid {_described(spec)}: {error}", spec.source)
        matcher = llguidance.LLMatcher(trie, grammar, log_level=0)
        if matcher.is_error():
            raise StructuredOutputError(
                f"invalid {_described(spec)}: {matcher.get_error()}", spec.source
            )
        return matcher


def _grammar(spec: StructuredOutputSpec) -> str:
    """llguidance's grammar text for ``spec`` (not yet checked)."""
    kind = spec.kind
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema(
            '{"type": "object"}', defaults=JSON_OPTIONS
        )
    if kind == "json_schema":
        try:
            schema = json.loads(spec.json_schema)
        except ValueError as e:
            raise StructuredOutputError(
                f"the JSON schema is not valid JSON: {e}", spec.source
            ) from None
        if not isinstance(schema, dict):
            raise StructuredOutputError(
                f"a JSON schema is an object, got {type(schema).__name__}", spec.source
            )
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults=JSON_OPTIONS
            )
        except ValueError as e:
            raise StructuredOutputError(f"invalid JSON schema: {e}", spec.source) from None
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.regex)
    if kind == "choice":
        return llguidance.grammar_from("choice", json.dumps(list(spec.choice)))
    try:
        # Lark as llguidance writes it, or GBNF (llama.cpp's), converted to Lark.
        return llguidance.grammar_from("grammar", spec.grammar)
    except ValueError as e:
        raise StructuredOutputError(f"invalid grammar: {e}", spec.source) from None


def _described(spec: StructuredOutputSpec) -> str:
    return {
        "json_schema": "JSON schema",
        "json_object": "JSON object grammar",
        "regex": "regular expression",
        "choice": "choice",
        "grammar": "grammar",
    }[spec.kind]


def grammar_compiler(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_token_ids: frozenset[int]
) -> GrammarCompiler | None:
    """The engine's compiler (cheap: nothing is built before the first compile); None
    (structured outputs refused) for a model without an EOS token."""
    eos = tokenizer.eos_token_id
    if eos not in eos_token_ids:
        eos = min(eos_token_ids, default=None)
    if eos is None:
        logger.warning("structured outputs are off: the model has no EOS token")
        return None
    return GrammarCompiler(tokenizer, vocab_size, eos)
