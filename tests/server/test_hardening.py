"""Hostile or careless clients: floods of prompts and stop strings refused before any
tokenizing, bodies that are not JSON objects we can read, non-JSON POSTs, a client
that stops reading a stream, a body that never arrives, and image URLs that never answer
or point inside the server's network."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from engine import AsyncLLM, EngineConfig
from engine.async_llm import NUM_MEDIA_INTAKE_THREADS
from engine.inputs import MAX_CHARS_PER_TOKEN
from engine.multimodal import fetch
from server.app import create_app
from server.errors import APIError
from server.http_protocol import head_timeout_protocol
from server.protocol import parse_json
from server.settings import ServerSettings
from tests.engine.image_server import redirecting_to, trap
from tests.engine.vlm_fixtures import image_part, text_part
from tests.server.conftest import API_KEY, LiveServer, live_server, running, wait_until
from tests.server.test_errors import JSON, USER, assert_error

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client


@contextmanager
def counted_intake(server: LiveServer) -> Iterator[list[str]]:
    """Records each call of the engine's intake (prepare / prepare_chat)."""
    inputs = server.llm.engine.inputs
    calls: list[str] = []
    originals = {name: getattr(inputs, name) for name in ("prepare", "prepare_chat")}
    for name, original in originals.items():

        def counted(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(inputs, name, counted)
    try:
        yield calls
    finally:
        for name in originals:
            delattr(inputs, name)


# -- cheap checks before tokenizing --------------------------------------------------------


def test_more_prompts_than_the_server_admits_is_a_400_before_tokenizing(
    server: LiveServer, http: httpx.Client
) -> None:
    limit = server.app.state.ctx.holder.max_admitted
    with counted_intake(server) as calls:
        body = {"prompt": ["hello world"] * (limit + 1), "max_tokens": 1}
        assert_error(http.post("/v1/completions", json=body), 400, "n", None, "generations")
        body = {"prompt": ["hello world"] * (limit // 2 + 1), "n": 2, "max_tokens": 1}
        assert_error(http.post("/v1/completions", json=body), 400, "n", None, "generations")
    assert calls == []
    assert server.app.state.ctx.holder.num_admitted == 0


def test_text_far_longer_than_the_context_is_refused_untokenized(
    server: LiveServer, http: httpx.Client
) -> None:
    text = "x" * (server.llm.max_model_len * MAX_CHARS_PER_TOKEN + 1)
    tokenizer = server.llm.engine.inputs.tokenizer
    calls = []
    server.llm.engine.inputs.tokenizer = lambda *a, **kw: calls.append(a) or tokenizer(*a, **kw)
    try:
        response = http.post("/v1/completions", json={"prompt": text})
        assert_error(response, 400, "prompt", None, "characters")
        chat = {"messages": [{"role": "user", "content": [text_part(text)]}]}
        assert_error(http.post("/v1/chat/completions", json=chat), 400, "messages", None, "char")
    finally:
        server.llm.engine.inputs.tokenizer = tokenizer
    assert calls == []


@pytest.mark.parametrize(
    "stop",
    [["s"] * 10_000, ["a", "b", "c", "d", "e"], "x" * 257, ["ok", "y" * 257]],
    ids=["10k", "five", "long", "one-long"],
)
def test_stop_strings_are_bounded_as_openai_does(http: httpx.Client, stop) -> None:
    for path, body in (
        ("/v1/completions", {"prompt": "hi", "stop": stop}),
        ("/v1/chat/completions", {"messages": USER, "stop": stop}),
    ):
        assert_error(http.post(path, json=body), 400, "stop", None, "at most 4 strings")


def test_four_stop_strings_are_served(http: httpx.Client) -> None:
    body = {"prompt": "hi", "stop": ["a", "b", "c", "d" * 256], "max_tokens": 2}
    assert http.post("/v1/completions", json=body).status_code == 200


# -- JSON and types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, says",
    [
        (b'{"messages": [{"role": "\\ud800", "content": "x"}]}', "lone surrogate"),
        (b'{"messages": [{"role": "user", "content": "a\\udfff"}]}', "lone surrogate"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "NaN"),
        (b'{"messages": [{"role": "user", "content": "x"}], "top_p": -Infinity}', "Infinity"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}', "large"),
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "levels deep"),
        (b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}", "levels deep"),
    ],
    ids=["surrogate-role", "surrogate-content", "nan", "infinity", "overflow", "deep", "40-deep"],
)
def test_unreadable_json_is_a_400(http: httpx.Client, raw: bytes, says: str) -> None:
    assert_error(http.post("/v1/chat/completions", content=raw, headers=JSON), 400, says=says)


@pytest.mark.parametrize(
    "raw, says",
    [
        (b'{"\\udc00": 1}', "lone surrogate"),  # in a key
        (b'{"a": "\\uD83D"}', "lone surrogate"),  # upper-case escape, high half alone
        (b"[" * 33 + b"]" * 33, "levels deep"),  # just past the limit
        ('{"a": "h\u00e9"}'.encode("utf-16"), "not valid JSON"),  # not UTF-8
    ],
    ids=["surrogate-key", "upper-case-escape", "33-deep", "utf-16"],
)
def test_strict_json_refuses(raw: bytes, says: str) -> None:
    with pytest.raises(APIError, match=says):
        parse_json(raw)


@pytest.mark.parametrize(
    "raw, value",
    [
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a surrogate pair: one emoji
        (b'{"a": "\\\\ud800"}', {"a": "\\ud800"}),  # an escaped backslash, then text
        (b"[" * 32 + b"]" * 32, json.loads(b"[" * 32 + b"]" * 32)),  # at the limit
    ],
    ids=["surrogate-pair", "escaped-backslash", "32-deep"],
)
def test_strict_json_reads(raw: bytes, value) -> None:
    assert parse_json(raw) == value


@pytest.mark.parametrize(
    "field, value",
    [
        ("stream", "yes"),
        ("stream", 1),
        ("max_tokens", 2.0),
        ("max_tokens", "2"),
        ("n", True),
        ("temperature", "0.5"),
        ("logprobs", 1),
    ],
)
def test_types_are_strict(http: httpx.Client, field: str, value) -> None:
    body = {"messages": USER, "max_tokens": 2, field: value}
    assert_error(http.post("/v1/chat/completions", json=body), 400, field)


def test_error_messages_hold_no_python_reprs(http: httpx.Client) -> None:
    part = {"type": {"nested": ["x"]}}
    chat = {"messages": [{"role": "user", "content": [part]}]}
    error = assert_error(http.post("/v1/chat/completions", json=chat), 400, "messages")
    assert '{"nested": ["x"]}' in error["message"] and "{'" not in error["message"]


def test_posts_must_be_json(server: LiveServer, http: httpx.Client) -> None:
    # A web page may POST text/plain anywhere without a CORS preflight.
    body = json.dumps({"prompt": "hi", "max_tokens": 1})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {} if content_type is None else {"Content-Type": content_type}
        response = http.post("/v1/completions", content=body, headers=headers)
        assert_error(response, 415, None, "unsupported_media_type", "application/json")
    charset = {"Content-Type": "Application/JSON; charset=utf-8"}
    assert http.post("/v1/completions", content=body, headers=charset).status_code == 200


def test_the_bearer_scheme_is_case_insensitive(server: LiveServer) -> None:
    for scheme in ("bearer", "BEARER", "Bearer"):
        headers = {"Authorization": f"{scheme} {API_KEY}"}
        assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 200


# -- clients that hold connections ------------------------------------------------------------


def raw_request(url: str, body: bytes, declared_length: int | None = None) -> bytes:
    """An HTTP/1.1 POST of ``body`` to /v1/completions, its head with the API key."""
    length = len(body) if declared_length is None else declared_length
    head = (
        "POST /v1/completions HTTP/1.1\r\n"
        f"Host: {url.removeprefix('http://')}\r\n"
        f"Authorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    return head.encode() + body


def connect(url: str, receive_buffer: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        # Before connecting, so the window the server sees is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, int(port)))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(60)
    received = b""
    while chunk := sock.recv(1 << 16):
        received += chunk
    return received


def test_a_client_that_stops_reading_loses_its_stream_and_its_slot(tiny_llama) -> None:
    settings = {"stream_send_timeout_seconds": 0.5}
    # Small socket buffers on both sides, so that the stream outgrows them at once.
    with live_server(tiny_llama, settings=settings, send_buffer=4096) as server:
        holder = server.app.state.ctx.holder
        body = {
            "prompt": "hi",
            "max_tokens": server.llm.max_model_len - 8,
            "ignore_eos": True,
            "stream": True,
            "n": 8,
            "logprobs": 5,
        }
        sock = connect(server.url, receive_buffer=1024)
        try:
            sock.sendall(raw_request(server.url, json.dumps(body).encode()))
            wait_until(lambda: holder.num_admitted == 8, "the stream was not admitted")
            # Never read: the server's sends block once the buffers are full, and the
            # send timeout must then end the stream and give its 8 slots back.
            wait_until(lambda: holder.num_admitted == 0, "the slots were not released", 120)
            assert server.all_blocks_free()
            received = read_until_closed(sock)
        finally:
            sock.close()
        # The stream was cut, not finished: the buffers could not have held all of it.
        assert received.startswith(b"HTTP/1.1 200") and b"data: [DONE]" not in received


def test_a_body_that_never_arrives_is_a_408(tiny_llama) -> None:
    with live_server(tiny_llama, settings={"body_read_timeout_seconds": 0.5}) as server:
        sock = connect(server.url)
        try:
            sock.sendall(raw_request(server.url, b'{"prompt": "h', declared_length=100))
            response = read_until_closed(sock)
        finally:
            sock.close()
        assert response.startswith(b"HTTP/1.1 408") and b"request_timeout" in response


# -- image URLs ------------------------------------------------------------------------------


@contextmanager
def silent_host() -> Iterator[tuple[str, list[socket.socket]]]:
    """A host on 127.0.0.1 that accepts connections and never answers: yields an image
    URL on it and the connections accepted so far."""
    accepted: list[socket.socket] = []
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stopping = threading.Event()

    def accept() -> None:
        while True:
            sock = listener.accept()[0]
            if stopping.is_set():
                sock.close()
                return
            accepted.append(sock)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/cat.png", accepted
    finally:
        # Closing a socket does not wake a thread blocked in accept(): one last
        # connection of our own does.
        stopping.set()
        socket.create_connection(listener.getsockname()).close()
        thread.join(timeout=10)
        listener.close()
        for sock in accepted:
            sock.close()


def test_images_from_a_host_that_never_answers_do_not_hold_up_text(tiny_llava) -> None:
    # More than asyncio's default executor ever has (32 threads), which intake used to
    # share with everything else.
    num_hanging = 33
    statuses: list[int] = []
    with live_server(tiny_llava, allow_private_media_urls=True, image_fetch_timeout=60) as server:
        with silent_host() as (url, accepted):
            chat = {"messages": [{"role": "user", "content": [image_part(url)]}], "max_tokens": 1}

            def hang() -> None:
                with server.http() as client:
                    statuses.append(client.post("/v1/chat/completions", json=chat).status_code)

            threads = [threading.Thread(target=hang, daemon=True) for _ in range(num_hanging)]
            for thread in threads:
                thread.start()
            # Every intake thread for images is now stuck on the silent host.
            wait_until(
                lambda: len(accepted) >= NUM_MEDIA_INTAKE_THREADS,
                "the fetches did not reach the host",
            )
            with server.http() as client:
                text = {"messages": USER, "max_tokens": 2}
                response = client.post("/v1/chat/completions", json=text, timeout=30)
            assert response.status_code == 200
        # The host is gone, so every fetch fails and each hanging request gets its answer
        # while the server still runs (not a reset when it stops).
        for thread in threads:
            thread.join(timeout=60)
    assert statuses == [400] * num_hanging


def test_image_urls_inside_the_network_are_refused_unfetched(vlm_server: LiveServer) -> None:
    with silent_host() as (url, accepted), vlm_server.http() as client:
        for image_url in (url, url.replace("127.0.0.1", "localhost")):
            parts = [image_part(image_url), text_part("What is it?")]
            chat = {"messages": [{"role": "user", "content": parts}], "max_tokens": 1}
            response = client.post("/v1/chat/completions", json=chat)
            assert_error(response, 400, "messages", None, "cannot fetch image")
        assert accepted == []


def test_a_redirect_into_the_network_is_refused_unfollowed(
    vlm_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The redirecting host (127.0.0.1) passes for a public one here; the address it sends
    # the fetch on to (127.0.0.2) is judged as it is: internal, so nothing may reach it.
    judged = fetch.is_internal
    monkeypatch.setattr(
        fetch, "is_internal", lambda address: str(address) != "127.0.0.1" and judged(address)
    )
    with trap("127.0.0.2") as (target, reached), redirecting_to(target) as url:
        parts = [image_part(url), text_part("What is it?")]
        chat = {"messages": [{"role": "user", "content": parts}], "max_tokens": 1}
        with vlm_server.http() as client:
            response = client.post("/v1/chat/completions", json=chat)
        assert_error(response, 400, "messages", None, "cannot fetch image")
        assert not reached()


def test_a_request_head_that_never_finishes_is_cut_off(tiny_llama) -> None:
    config = EngineConfig(model=str(tiny_llama), kv_cache_memory=0.05)
    app = create_app(ServerSettings(), lambda: AsyncLLM(config))
    with running(app, http=head_timeout_protocol(0.5)) as url:
        sock = connect(url)
        try:
            # Slowloris: a head that is never finished. The server closes the connection.
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            assert read_until_closed(sock) == b""
        finally:
            sock.close()
        # A whole head in time is served, and its keep-alive connection re-armed.
        sock = connect(url)
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_until_closed(sock).startswith(b"HTTP/1.1 200")
        finally:
            sock.close()
