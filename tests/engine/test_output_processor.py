"""The output processor alone: token deltas in (as the engine core makes them), outputs
out, with the demo tokenizer (byte-level BPE: emoji split across tokens)."""

from __future__ import annotations

import pytest

from engine.core import TokenDelta
from engine.demo import write_tokenizer
from engine.output_processor import OutputProcessor
from engine.sampler import SampleResult
from engine.sampling import SamplingParams

PROMPT = [1, 2, 3]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def delta(token_id: int, finish_reason: str | None = None, samples=()) -> TokenDelta:
    return TokenDelta("r", [token_id], list(samples), finish_reason, 0)


def run(tokenizer, token_ids: list[int], params: SamplingParams, last_reason="length"):
    state = OutputProcessor(tokenizer).new_request("r", PROMPT, params)
    outputs = []
    for i, token_id in enumerate(token_ids):
        reason = last_reason if i == len(token_ids) - 1 else None
        outputs.append(state.apply(delta(token_id, reason)))
        if outputs[-1].finished:
            break
    return state, outputs


def test_utf8_split_across_tokens_is_never_released_in_part(tokenizer):
    text = "go 🚀🎉 ok"
    token_ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(token_ids) > len(text.split()), "the emoji should take several tokens"
    _, outputs = run(tokenizer, token_ids, SamplingParams())
    pieces = [o.new_text for o in outputs]
    assert "".join(pieces) == outputs[-1].text == text
    assert not any(piece.endswith("\ufffd") for piece in pieces)
    assert outputs[-1].token_ids == token_ids and outputs[-1].finish_reason == "length"


def test_a_stop_string_across_deltas_ends_the_output_and_asks_for_an_abort(tokenizer):
    text = "hello wonderful world"
    token_ids = tokenizer(text, add_special_tokens=False).input_ids
    state, outputs = run(tokenizer, token_ids, SamplingParams(stop=["lo wo"]))
    assert outputs[-1].finish_reason == "stop" and outputs[-1].text == "hel"
    assert "".join(o.new_text for o in outputs) == "hel"
    assert state.needs_abort  # the core never saw the stop string
    assert len(outputs) < len(token_ids)


def test_a_stop_token_has_no_text_and_held_text_is_flushed(tokenizer):
    token_ids = tokenizer("abc", add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    # "abc" may be the start of the stop string "abcX": held until the end says it is not.
    state, outputs = run(tokenizer, [*token_ids, eos], SamplingParams(stop=["abcX"]), "stop")
    assert outputs[-1].text == "abc" and outputs[-1].token_ids == [*token_ids, eos]
    assert outputs[-1].finish_reason == "stop" and not state.needs_abort


def test_logprob_texts_and_the_history_of_earlier_outputs(tokenizer):
    ids = tokenizer("one two", add_special_tokens=False).input_ids
    state = OutputProcessor(tokenizer).new_request("r", PROMPT, SamplingParams(logprobs=1))
    first = state.apply(delta(ids[0], samples=[SampleResult(ids[0], -0.5, ((ids[1], -0.7),))]))
    second = state.apply(delta(ids[1], "length", samples=[SampleResult(ids[1], -0.1, ())]))
    [logprob] = first.new_logprobs
    assert logprob.token == tokenizer.decode([ids[0]]) and logprob.logprob == -0.5
    assert logprob.top == ((ids[1], tokenizer.decode([ids[1]]), -0.7),)
    # An earlier output still stands for what it had, though the request went on.
    assert first.token_ids == ids[:1] and len(first.logprobs) == 1
    assert second.token_ids == ids and len(second.logprobs) == 2
    assert first.text + second.new_text == second.text == "one two"


def test_an_engine_failure_skips_the_flush(tokenizer):
    state = OutputProcessor(tokenizer).new_request("r", PROMPT, SamplingParams())
    failed = state.apply(TokenDelta("r", [], [], "error", 0))
    assert failed.finish_reason == "error" and failed.text == ""
