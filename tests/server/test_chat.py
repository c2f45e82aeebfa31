"""POST /v1/chat/completions over real HTTP: OpenAI's shapes, streaming, and that what
comes over the wire is what the engine generates."""

from __future__ import annotations

import pytest

from engine import SamplingParams
from tests.server.conftest import LiveServer, sse_chunks

pytestmark = pytest.mark.timeout(120)

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours."},
]


def chat(server: LiveServer, **kwargs):
    kwargs.setdefault("messages", MESSAGES)
    return server.openai().chat.completions.create(model=server.model, **kwargs)


def stream_text(server: LiveServer, **kwargs) -> tuple[dict[int, str], list]:
    """Per choice index, the concatenated content of a streamed chat; and the chunks."""
    chunks = list(chat(server, stream=True, **kwargs))
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    return texts, chunks


def test_response_has_openai_shape_and_usage(server: LiveServer) -> None:
    with server.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": server.model, "messages": MESSAGES, "max_tokens": 5},
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
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == server.model
    assert body["system_fingerprint"].startswith("fp_")
    assert response.headers["x-request-id"] == body["id"]
    [choice] = body["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and isinstance(
        choice["message"]["content"], str
    )
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(server.llm.chat_prompt(MESSAGES))
    assert 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0


def test_greedy_output_equals_the_engines(server: LiveServer) -> None:
    expected = server.engine_output(
        server.llm.chat_prompt(MESSAGES), SamplingParams(max_tokens=12, temperature=0)
    )
    response = chat(server, max_tokens=12, temperature=0)
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == expected.finish_reason
    assert response.usage.completion_tokens == len(expected.token_ids)
    texts, _ = stream_text(server, max_tokens=12, temperature=0)
    assert texts == {0: expected.text}


def test_stream_framing_and_chunk_order(server: LiveServer) -> None:
    body = {
        "model": server.model,
        "messages": MESSAGES,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
        "extra_field_from_a_newer_client": {"ignored": True},
    }
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    chunks = sse_chunks(raw)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    first, *content, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in content)
    assert all(c["choices"][0]["finish_reason"] is None for c in [first, *content])
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] in (
        "stop",
        "length",
    )
    assert all(chunk["usage"] is None for chunk in [first, *content, finish])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= len(content)
    assert usage["usage"]["prompt_tokens"] == len(server.llm.chat_prompt(MESSAGES))


def test_stream_without_usage_has_no_usage_chunk(server: LiveServer) -> None:
    _, chunks = stream_text(server, max_tokens=3)
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text(server: LiveServer, stream: bool) -> None:
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    full = server.engine_output(server.llm.chat_prompt(MESSAGES), params).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3
    expected = full[: full.index(stop)]
    kwargs = dict(
        max_tokens=24, temperature=0, stop=["never appears", stop], extra_body={"ignore_eos": True}
    )
    if stream:
        texts, chunks = stream_text(server, **kwargs)
        assert texts[0] == expected
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        choice = chat(server, **kwargs).choices[0]
        assert (choice.message.content, choice.finish_reason) == (expected, "stop")


def test_seed_makes_sampling_reproducible(server: LiveServer) -> None:
    kwargs = dict(max_tokens=16, temperature=1.0, extra_body={"ignore_eos": True})
    first = chat(server, seed=1234, **kwargs).choices[0].message.content
    assert chat(server, seed=1234, **kwargs).choices[0].message.content == first
    assert stream_text(server, seed=1234, **kwargs)[0] == {0: first}
    assert chat(server, seed=4321, **kwargs).choices[0].message.content != first


def test_n_choices_are_seeded_one_apart(server: LiveServer) -> None:
    kwargs = dict(max_tokens=10, temperature=1.0, extra_body={"ignore_eos": True})
    response = chat(server, n=3, seed=7, **kwargs)
    texts = [choice.message.content for choice in response.choices]
    assert [choice.index for choice in response.choices] == [0, 1, 2]
    assert len(set(texts)) > 1
    # Choice i is the single request with seed 7 + i.
    for i, text in enumerate(texts):
        assert chat(server, seed=7 + i, **kwargs).choices[0].message.content == text
    assert response.usage.prompt_tokens == len(server.llm.chat_prompt(MESSAGES))
    assert response.usage.completion_tokens == 30
    streamed, chunks = stream_text(server, n=3, seed=7, **kwargs)
    assert streamed == dict(enumerate(texts))
    roles = [c.choices[0].index for c in chunks if c.choices[0].delta.role == "assistant"]
    finishes = [c.choices[0].index for c in chunks if c.choices[0].finish_reason]
    assert sorted(roles) == sorted(finishes) == [0, 1, 2]


def test_logprobs_in_chat_format(server: LiveServer) -> None:
    kwargs = dict(
        max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True}
    )
    response = chat(server, **kwargs)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 6
    for item in content:
        assert item.logprob <= 0 and item.bytes == list(item.token.encode())
        assert len(item.top_logprobs) == 3
        top = [alt.logprob for alt in item.top_logprobs]
        assert top == sorted(top, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert item.token == item.top_logprobs[0].token and item.logprob == pytest.approx(top[0])
    _, chunks = stream_text(server, **kwargs)
    streamed = [
        item for c in chunks if c.choices[0].logprobs for item in c.choices[0].logprobs.content
    ]
    assert [(i.token, i.logprob) for i in streamed] == [(i.token, i.logprob) for i in content]


def test_content_parts_and_max_completion_tokens(server: LiveServer) -> None:
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}],
        }
    ]
    joined = [{"role": "user", "content": "Hello\nthere"}]
    kwargs = dict(temperature=0, max_completion_tokens=4, extra_body={"ignore_eos": True})
    from_parts = chat(server, messages=parts, **kwargs)
    assert from_parts.usage.completion_tokens == 4
    assert (
        from_parts.choices[0].message.content
        == chat(server, messages=joined, **kwargs).choices[0].message.content
    )


def test_sampling_extensions_and_penalties(server: LiveServer) -> None:
    greedy = chat(server, max_tokens=8, temperature=0).choices[0].message.content
    top_k_1 = chat(server, max_tokens=8, temperature=1.0, seed=3, extra_body={"top_k": 1})
    assert top_k_1.choices[0].message.content == greedy
    forced_id = server.llm.engine.tokenizer.encode(" the")[0]
    forced = chat(
        server,
        max_tokens=5,
        temperature=0,
        logit_bias={str(forced_id): 100},
        logprobs=True,
        extra_body={"ignore_eos": True},
    )
    tokens = [item.token for item in forced.choices[0].logprobs.content]
    assert tokens == [" the"] * 5
    penalised = chat(
        server,
        max_tokens=8,
        temperature=0.7,
        top_p=0.9,
        seed=1,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        user="someone",
        extra_body={"min_p": 0.01, "repetition_penalty": 1.2},
    )
    assert penalised.choices[0].finish_reason in ("stop", "length")
