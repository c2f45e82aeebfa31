"""The grammar compiler's token trie (~115 MiB for a 152k vocabulary) is built by the
first structured request, once, even when two arrive together; never by a server that
does not constrain its outputs."""

from __future__ import annotations

import json
import threading

import jsonschema
import llguidance.hf
import pytest

from engine import LLM, InvalidRequestError, SamplingParams
from engine.structured import StructuredOutputError, StructuredOutputSpec
from engine.structured.compiler import CompiledGrammar, GrammarCompiler
from engine.tokenizer import load_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["n"],
    "additionalProperties": False,
}


@pytest.fixture
def trie_builds(monkeypatch) -> list[int]:
    """Counts llguidance's token-trie builds (one entry a build)."""
    builds: list[int] = []
    build = llguidance.hf.from_tokenizer

    def counted(*args, **kwargs):
        builds.append(1)
        return build(*args, **kwargs)

    monkeypatch.setattr(llguidance.hf, "from_tokenizer", counted)
    return builds


def test_the_first_structured_request_builds_the_trie_and_is_checked_first(tiny_llama, trie_builds):
    llm = LLM(str(tiny_llama), kv_cache_memory=0.02)
    llm.generate("one two", SamplingParams(max_tokens=4, temperature=0))
    assert trie_builds == []
    bad = StructuredOutputSpec(json_schema='{"type": "objec"}')
    with pytest.raises(StructuredOutputError, match="objec"):
        llm.generate("one two", SamplingParams(max_tokens=20, structured=bad))
    assert not llm.engine.has_unfinished and len(trie_builds) == 1
    spec = StructuredOutputSpec(json_schema=json.dumps(SCHEMA))
    output = llm.generate("one two", SamplingParams(max_tokens=20, seed=0, structured=spec))[0]
    assert output.finish_reason == "stop"
    jsonschema.validate(json.loads(output.text), SCHEMA)
    assert len(trie_builds) == 1


class ObservedLock:
    """A lock that says when an acquirer finds it held."""

    def __init__(self):
        self._lock = threading.Lock()
        self.contended = threading.Event()

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            self.contended.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()


def test_two_first_requests_at_once_wait_for_one_trie_build(tiny_llama, monkeypatch):
    tokenizer = load_tokenizer(tiny_llama)
    compiler = GrammarCompiler(tokenizer, len(tokenizer), tokenizer.eos_token_id)
    lock = ObservedLock()
    compiler._trie_lock = lock
    building, release = threading.Event(), threading.Event()
    builds: list[int] = []
    build = llguidance.hf.from_tokenizer

    def held_build(*args, **kwargs):
        builds.append(1)
        building.set()
        release.wait()
        return build(*args, **kwargs)

    monkeypatch.setattr(llguidance.hf, "from_tokenizer", held_build)
    results: dict[str, object] = {}

    def compile_in_thread(regex: str) -> threading.Thread:
        def work():
            try:
                results[regex] = compiler.compile(StructuredOutputSpec(regex=regex))
            except Exception as e:  # reported by the assertion below
                results[regex] = e

        thread = threading.Thread(target=work)
        thread.start()
        return thread

    first = compile_in_thread("a+")
    try:
        assert building.wait(timeout=60)
        second = compile_in_thread("b+")
        # The second request reaches the trie while the first is still building it.
        assert lock.contended.wait(timeout=60)
    finally:
        release.set()
    first.join()
    second.join()
    assert all(isinstance(r, CompiledGrammar) for r in results.values()), results
    assert len(results) == 2 and builds == [1]


def test_a_tokenizer_llguidance_refuses_turns_structured_outputs_off_once(tiny_llama, monkeypatch):
    attempts: list[int] = []

    def refuse(*args, **kwargs):
        attempts.append(1)
        raise ValueError("Only fast tokenizers are supported")

    monkeypatch.setattr(llguidance.hf, "from_tokenizer", refuse)
    tokenizer = load_tokenizer(tiny_llama)
    compiler = GrammarCompiler(tokenizer, len(tokenizer), tokenizer.eos_token_id)
    for regex in ("a+", "b+"):
        with pytest.raises(InvalidRequestError, match="off for this model: Only fast"):
            compiler.compile(StructuredOutputSpec(regex=regex))
    assert attempts == [1]
