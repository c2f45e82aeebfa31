"""Every refusal is an OpenAI error object with the right status, never FastAPI's own
shape (no 422), and names the field at fault where there is one."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.server.conftest import LiveServer, live_server

pytestmark = pytest.mark.timeout(120)

USER = [{"role": "user", "content": "Hi"}]
JSON = {"Content-Type": "application/json"}


def assert_error(
    response: httpx.Response,
    status: int,
    param: str | None = None,
    code: str | None = None,
    says: str = "",
) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param, error
    assert error["code"] == code, error
    assert says.lower() in error["message"].lower(), error["message"]
    return error


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client


CHAT_400 = [
    ({"messages": USER, "temperature": "hot"}, "temperature", None, "temperature"),
    ({"messages": USER, "temperature": -1}, "temperature", None, "temperature"),
    ({"messages": USER, "top_p": 0}, "top_p", None, "top_p"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens", None, "max_tokens"),
    ({"messages": USER, "n": 0}, "n", None, "n"),
    ({"messages": USER, "presence_penalty": 3}, "presence_penalty", None, "presence_penalty"),
    ({"messages": USER, "logit_bias": {"x": 1}}, "logit_bias", None, "logit_bias"),
    ({"messages": USER, "logit_bias": {"999999": 1}}, "logit_bias", None, "logit_bias"),
    ({"messages": USER, "stop": ""}, "stop", None, "stop"),
    ({"messages": USER, "top_logprobs": 2}, "top_logprobs", None, "logprobs"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs", None, "logprobs"),
    (
        {"messages": USER, "stream_options": {"include_usage": True}},
        "stream_options",
        None,
        "stream",
    ),
    ({"messages": []}, "messages", None, "messages"),
    ({}, "messages", None, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages", None, "role"),
    ({"messages": [{"role": "narrator", "content": "x"}]}, "messages", None, "narrator"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages", None, "tool_call_id"),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
                    ],
                }
            ]
        },
        "messages",
        "images_not_supported",
        "does not accept images",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        "messages",
        None,
        "input_audio",
    ),
    ({"messages": USER, "tools": [{"type": "function"}]}, "tools", None, "function"),
    ({"messages": USER, "tool_choice": "auto"}, "tool_choice", None, "needs tools"),
    ({"messages": USER, "functions": [{"name": "f"}]}, "functions", "unsupported_parameter", ""),
    ({"messages": USER, "function_call": "auto"}, "function_call", "unsupported_parameter", ""),
    ({"messages": USER, "response_format": {"type": "yaml"}}, "response_format", None, "type"),
    ({"messages": USER, "audio": {"voice": "x"}}, "audio", "unsupported_parameter", "audio"),
    ({"messages": USER, "best_of": 2}, "best_of", "unsupported_parameter", "best_of"),
]


@pytest.mark.parametrize(("body", "param", "code", "says"), CHAT_400)
def test_bad_chat_requests_get_400(http: httpx.Client, body, param, code, says) -> None:
    assert_error(http.post("/v1/chat/completions", json=body), 400, param, code, says)


COMPLETION_400 = [
    ({"prompt": "x", "suffix": "y"}, "suffix", "unsupported_parameter", "suffix"),
    ({"prompt": "x", "echo": True}, "echo", "unsupported_parameter", "echo"),
    ({"prompt": "x", "best_of": 3}, "best_of", "unsupported_parameter", "best_of"),
    ({"prompt": ""}, "prompt", None, "empty"),
    ({"prompt": []}, "prompt", None, "empty"),
    ({"prompt": [[1, 2], []]}, "prompt", None, "empty"),
    ({"prompt": [1, "a"]}, "prompt", None, "prompt"),
    ({"prompt": [5, 999999]}, "prompt", None, "token ids"),
    ({"prompt": "x", "logprobs": -1}, "logprobs", None, "logprobs"),
    ({}, "prompt", None, "prompt"),
]


@pytest.mark.parametrize(("body", "param", "code", "says"), COMPLETION_400)
def test_bad_completion_requests_get_400(http: httpx.Client, body, param, code, says) -> None:
    assert_error(http.post("/v1/completions", json=body), 400, param, code, says)


def test_supported_values_of_refused_fields_pass(http: httpx.Client) -> None:
    chat = {
        "messages": USER,
        "max_tokens": 2,
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "best_of": 1,
        "modalities": ["text"],
    }
    assert http.post("/v1/chat/completions", json=chat).status_code == 200
    completion = {"prompt": "x", "max_tokens": 2, "echo": False, "suffix": "", "n": 2, "best_of": 2}
    assert http.post("/v1/completions", json=completion).status_code == 200


def test_body_that_is_not_a_json_object(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", content=b"{not json", headers=JSON)
    assert_error(response, 400, says="not valid JSON")
    assert_error(http.post("/v1/completions", json=[1, 2]), 400, says="JSON object")


def test_prompt_longer_than_the_context(server: LiveServer, http: httpx.Client) -> None:
    max_model_len = server.llm.max_model_len
    long_text = " ".join(["word"] * (max_model_len + 10))
    num_tokens = len(server.llm.engine.tokenizer(long_text).input_ids)
    error = assert_error(
        http.post("/v1/completions", json={"prompt": long_text}),
        400,
        "prompt",
        "context_length_exceeded",
    )
    assert str(num_tokens) in error["message"] and str(max_model_len) in error["message"]
    chat = {"messages": [{"role": "user", "content": long_text}]}
    error = assert_error(
        http.post("/v1/chat/completions", json=chat), 400, "messages", "context_length_exceeded"
    )
    assert str(max_model_len) in error["message"]
    streamed = {**chat, "stream": True}
    assert_error(
        http.post("/v1/chat/completions", json=streamed), 400, "messages", "context_length_exceeded"
    )


def test_max_tokens_beyond_the_context(server: LiveServer, http: httpx.Client) -> None:
    max_model_len = server.llm.max_model_len
    completion = {"prompt": "hello there", "max_tokens": max_model_len}
    error = assert_error(
        http.post("/v1/completions", json=completion), 400, "prompt", "context_length_exceeded"
    )
    assert f"max_tokens {max_model_len}" in error["message"]
    chat = {"messages": USER, "max_completion_tokens": max_model_len, "stream": True}
    assert_error(
        http.post("/v1/chat/completions", json=chat), 400, "messages", "context_length_exceeded"
    )
    # Without max_tokens a chat answer may fill what the prompt leaves.
    del chat["max_completion_tokens"]
    assert http.post("/v1/chat/completions", json={**chat, "stream": False}).status_code == 200


def test_unknown_model_and_route_get_404(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER})
    assert_error(response, 404, "model", "model_not_found", "gpt-4o")
    assert_error(http.get("/v1/models/gpt-4o"), 404, "model", "model_not_found")
    assert_error(http.post("/v1/embeddings", json={}), 404, None, "unknown_url", "/v1/embeddings")
    assert_error(http.get("/v1/chat/completions"), 405, says="method not allowed")


def test_body_too_large_gets_413(tiny_llama) -> None:
    with (
        live_server(tiny_llama, settings={"max_request_bytes": 4096}) as server,
        server.http() as http,
    ):
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        assert_error(
            http.post("/v1/chat/completions", json=big),
            413,
            None,
            "request_too_large",
            "4096 bytes",
        )

        def chunked() -> Iterator[bytes]:
            yield b'{"prompt": "'
            for _ in range(8):
                yield b"y" * 1000
            yield b'"}'

        # No Content-Length: the limit holds for a streamed body too.
        response = http.post("/v1/completions", content=chunked(), headers=JSON)
        assert "content-length" not in response.request.headers
        assert_error(response, 413, None, "request_too_large")
        assert (
            http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
        )
