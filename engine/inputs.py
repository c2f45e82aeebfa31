"""Requests into what the engine core takes: tokenizing, rendering chats, preprocessing
images and checking everything a request brings against the model, once per request.

``prepare``/``prepare_chat`` do the expensive, blocking part (tokenize, render, fetch and
decode images): callers run them off any event loop. ``check_params`` and
``make_sequence`` are cheap, so a prepared prompt serves several choices (OpenAI's ``n``).
The tokenizer here serves intake only; the output processor decodes with its own, so a
long prompt being tokenized never holds up the tokens of running requests.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from engine.errors import InvalidRequestError, PromptTooLongError
from engine.multimodal.images import ImageInput
from engine.multimodal.mrope import MRopePositions
from engine.multimodal.prompt import flatten_messages, render_chat
from engine.multimodal.requests import ImageRequests, count_chars
from engine.sampling import SamplingParams
from engine.sequence import Sequence
from engine.structured.compiler import CompiledGrammar, GrammarCompiler
from engine.structured.spec import StructuredOutputSpec
from engine.tokenizer import ChatTemplate

# Text this many times longer than the context (in characters per token) cannot fit it:
# real text averages 3-6 characters a token, and the rest is room for runs a tokenizer
# merges. Checked before tokenizing, which for megabytes of text takes seconds.
MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt checked against the model: its token ids (each image's tokens expanded)
    and, for a VLM, its images with the positions they fill."""

    token_ids: list[int]
    images: list[ImageInput] = field(default_factory=list)
    image_positions: list[int] = field(default_factory=list)
    image_sizes: list[int] | None = None  # positions per image; None: all alike
    mrope: MRopePositions | None = None  # M-RoPE models' positions of a prompt with images

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class InputProcessor:
    def __init__(
        self,
        model_name: str,
        tokenizer: PreTrainedTokenizerBase,
        chat_template: ChatTemplate,
        vision: ImageRequests | None,
        vocab_size: int,
        max_model_len: int,
        block_size: int,
        grammars: GrammarCompiler | None = None,
    ):
        self.model_name = model_name
        self.tokenizer = tokenizer
        # Fast tokenizers are not safe to call from several threads at once, and intake
        # runs on as many threads as a server gives it.
        self._tokenizer_lock = threading.Lock()
        self.chat_template = chat_template
        self.vision = vision  # set for VLMs only: their image token, preprocessing, checks
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.block_size = block_size
        # None when the model has no EOS token to end a grammar (structured outputs refused).
        self.grammars = grammars

    def prepare(
        self, prompt: str | list[int], images: list[ImageInput] | None = None
    ) -> PreparedPrompt:
        """Validate and tokenize a prompt. Raises InvalidRequestError (a ValueError).

        With ``images`` (from ``prepare_chat``), token-id prompts carry each image's tokens
        already expanded; in a string prompt each image token is expanded here."""
        images = list(images or [])
        if images and self.vision is None:
            raise InvalidRequestError(f"model {self.model_name!r} does not accept images")
        if self.vision is not None:
            self.vision.check(images)
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt is empty")
            self._check_chars(len(prompt))
            with self._tokenizer_lock:
                token_ids = self.tokenizer(prompt).input_ids
                # NOTE: under the lock: expanding may tokenize (Qwen3-VL's timestamps).
                if images:
                    token_ids = self.vision.expand(token_ids, images)
        else:
            token_ids = list(prompt)
            if not token_ids:
                raise InvalidRequestError("the prompt is empty")
            bad = [t for t in token_ids if not isinstance(t, int) or not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"prompt token ids must be in [0, {self.vocab_size}); got {bad[:5]}"
                )
        return self._checked(token_ids, images)

    def prepare_chat(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        continue_final_message: bool = False,
    ) -> PreparedPrompt:
        """OpenAI-style ``messages`` (content a string, or ``text`` and ``image_url``
        parts in any order) rendered by the chat template, with ``tools`` (OpenAI tool
        definitions) for templates that write them in, and tokenized, each image
        fetched, decoded and preprocessed (blocking). ``continue_final_message``: see
        ``ChatTemplate.render``."""
        self._check_chars(count_chars(messages))
        if self.vision is None:
            flat, images = flatten_messages(messages, None, None, 0)
        else:
            flat, images = self.vision.flatten(messages)
            self.vision.check(images)
        with self._tokenizer_lock:
            text = render_chat(self.chat_template, messages, flat, tools, continue_final_message)
            # The template writes any BOS itself, so the tokenizer must not add another.
            token_ids = self.tokenizer(text, add_special_tokens=False).input_ids
            if images:
                token_ids = self.vision.expand(token_ids, images)
        return self._checked(token_ids, images)

    def _check_chars(self, num_chars: int) -> None:
        max_chars = self.max_model_len * MAX_CHARS_PER_TOKEN
        if num_chars > max_chars:
            raise InvalidRequestError(
                f"the prompt has {num_chars} characters, more than a context of "
                f"{self.max_model_len} tokens can hold (at most {max_chars})"
            )

    def _checked(self, token_ids: list[int], images: list[ImageInput]) -> PreparedPrompt:
        if len(token_ids) >= self.max_model_len:
            raise PromptTooLongError(len(token_ids), self.max_model_len)
        if self.vision is None:
            return PreparedPrompt(token_ids)
        # NOTE: also without images: image tokens in a prompt must have images to match.
        positions = self.vision.positions(token_ids, images)
        sizes, mrope = self.vision.image_sizes(images), self.vision.mrope(token_ids, images)
        return PreparedPrompt(token_ids, images, positions, sizes, mrope)

    def check_params(
        self, prompt: PreparedPrompt, params: SamplingParams, fit_max_tokens: bool = False
    ) -> None:
        """Check ``params`` against the model, compiling a structured output's grammar
        (cached: a new schema costs milliseconds; the engine's first about a second, to
        build the token trie). With ``fit_max_tokens`` the prompt and
        ``max_tokens`` together must fit the context (OpenAI's API is that strict; the
        engine alone would stop at the context's end)."""
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams")
        bad = [t for t in params.logit_bias if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"logit_bias token ids must be in [0, {self.vocab_size}); got {bad[:5]}",
                "logit_bias",
            )
        if fit_max_tokens and prompt.num_tokens + params.max_tokens > self.max_model_len:
            raise PromptTooLongError(prompt.num_tokens, self.max_model_len, params.max_tokens)
        if params.structured is not None:
            self._grammar(params.structured)

    def _grammar(self, spec: StructuredOutputSpec) -> CompiledGrammar:
        if self.grammars is None:
            raise InvalidRequestError(
                f"model {self.model_name!r} has no EOS token, which structured outputs need"
            )
        return self.grammars.compile(spec)

    def make_sequence(
        self, request_id: str, prompt: PreparedPrompt, params: SamplingParams
    ) -> Sequence:
        """The core's record of one generation from ``prompt`` (params checked here), with
        a grammar matcher of its own for a structured output."""
        self.check_params(prompt, params)
        spec = params.structured
        return Sequence(
            request_id,
            prompt.token_ids,
            params,
            self.block_size,
            prompt.images,
            prompt.image_positions,
            [image.content_hash for image in prompt.images],
            None if spec is None else self._grammar(spec).new_matcher(),
            image_sizes=prompt.image_sizes,
            mrope=prompt.mrope,
        )
