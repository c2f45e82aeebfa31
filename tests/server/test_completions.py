"""POST /v1/completions over real HTTP: the four prompt shapes, n, streaming, legacy
logprobs."""

from __future__ import annotations

import pytest

from engine import SamplingParams
from tests.server.conftest import LiveServer, sse_chunks

pytestmark = pytest.mark.timeout(120)

PROMPT = "The quick brown fox"


def complete(server: LiveServer, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    return server.openai().completions.create(model=server.model, **kwargs)


def greedy(server: LiveServer, prompt: str | list[int], max_tokens: int) -> str:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return server.engine_output(prompt, params).text


def test_response_shape_and_default_max_tokens(server: LiveServer) -> None:
    with server.http() as http:
        response = http.post(
            "/v1/completions", json={"prompt": PROMPT, "temperature": 0, "ignore_eos": True}
        )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
    }
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    [choice] = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    # OpenAI's default max_tokens for this endpoint is 16.
    assert (choice["finish_reason"], body["usage"]["completion_tokens"]) == ("length", 16)
    assert choice["text"] == greedy(server, PROMPT, 16)
    num_prompt = len(server.llm.engine.tokenizer(PROMPT).input_ids)
    assert body["usage"]["prompt_tokens"] == num_prompt
    assert body["usage"]["total_tokens"] == num_prompt + 16


def test_prompt_shapes_and_choice_order(server: LiveServer) -> None:
    ids = server.llm.engine.tokenizer(PROMPT).input_ids
    other = "Once upon a time"
    kwargs = dict(max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert complete(server, prompt=ids, **kwargs).choices[0].text == greedy(server, ids, 5)
    response = complete(server, prompt=[PROMPT, other], n=2, **kwargs)
    # Choice index = prompt index * n + i.
    texts = [(choice.index, choice.text) for choice in response.choices]
    first, second = greedy(server, PROMPT, 5), greedy(server, other, 5)
    assert texts == [(0, first), (1, first), (2, second), (3, second)]
    num_prompt = len(ids) + len(server.llm.engine.tokenizer(other).input_ids)
    assert response.usage.prompt_tokens == num_prompt
    assert response.usage.completion_tokens == 20
    other_ids = server.llm.engine.tokenizer(other).input_ids
    by_ids = complete(server, prompt=[ids, other_ids], **kwargs)
    assert [choice.text for choice in by_ids.choices] == [first, second]


def test_stream_framing(server: LiveServer) -> None:
    body = {
        "prompt": [PROMPT, "Hello"],
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        chunks = sse_chunks(response.read().decode())
    *choice_chunks, usage = chunks
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    texts = {0: "", 1: ""}
    finished = []
    for chunk in choice_chunks:
        [choice] = chunk["choices"]
        assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
        assert choice["index"] not in finished, "text after the finish chunk"
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"] is not None:
            assert (choice["text"], choice["finish_reason"]) == ("", "length")
            finished.append(choice["index"])
    assert sorted(finished) == [0, 1]
    assert texts == {0: greedy(server, PROMPT, 4), 1: greedy(server, "Hello", 4)}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8


def test_legacy_logprobs(server: LiveServer) -> None:
    kwargs = dict(max_tokens=5, temperature=0, logprobs=2, extra_body={"ignore_eos": True})
    logprobs = complete(server, **kwargs).choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    offsets = [0]
    for token in logprobs.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs.text_offset == offsets
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert len(top) <= 2 and max(top.values()) == pytest.approx(logprob)
        assert token in top
    streamed = [
        c.choices[0].logprobs
        for c in complete(server, stream=True, **kwargs)
        if c.choices[0].logprobs
    ]
    assert [t for lp in streamed for t in lp.tokens] == logprobs.tokens
    assert [o for lp in streamed for o in lp.text_offset] == logprobs.text_offset


def test_stop_list_and_seed(server: LiveServer) -> None:
    full = greedy(server, PROMPT, 20)
    stop = full[6:9]
    choice = complete(
        server, max_tokens=20, temperature=0, stop=[stop, "zzzz"], extra_body={"ignore_eos": True}
    ).choices[0]
    assert (choice.text, choice.finish_reason) == (full[: full.index(stop)], "stop")
    kwargs = dict(max_tokens=10, temperature=0.9, seed=99, extra_body={"ignore_eos": True})
    assert complete(server, **kwargs).choices[0].text == complete(server, **kwargs).choices[0].text
