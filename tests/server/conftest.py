"""Real uvicorn servers on 127.0.0.1 (a free port, a background thread) over a tiny random
Llama (or LLaVA), and the clients that talk to them."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from engine import AsyncLLM, EngineConfig, RequestOutput, SamplingParams
from server.app import create_app
from server.settings import ServerSettings
from tests.engine.vlm_fixtures import build_tiny_llava

API_KEY = "sk-test-key"
# A small pool keeps the engine's allocations (and the block checks) quick.
ENGINE_DEFAULTS = dict(kv_cache_memory=0.05)


@dataclass
class LiveServer:
    url: str
    app: FastAPI
    api_key: str | None

    @property
    def llm(self) -> AsyncLLM:
        return self.app.state.ctx.holder.llm

    @property
    def model(self) -> str:
        return self.app.state.ctx.model_name

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.api_key is None else {"Authorization": f"Bearer {self.api_key}"}

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=self.api_key or "none", max_retries=0, timeout=60
        )

    def async_openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=self.api_key or "none", max_retries=0, timeout=60
        )

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def all_blocks_free(self, timeout: float = 15.0) -> bool:
        """Polls until every KV block is free again (or ``timeout`` passes)."""
        block_manager = self.llm.core.block_manager
        deadline = time.monotonic() + timeout
        while block_manager.num_free_blocks != block_manager.num_blocks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def engine_output(self, prompt: str | list[int], params: SamplingParams) -> RequestOutput:
        """The engine's own final output for ``prompt``, bypassing HTTP."""

        async def run() -> RequestOutput:
            async for output in self.llm.generate(f"direct-{time.monotonic_ns()}", prompt, params):
                final = output
            return final

        return asyncio.run(run())


@contextmanager
def running(
    app: FastAPI, wait_ready: bool = True, send_buffer: int | None = None, **uvicorn_options
) -> Iterator[str]:
    """Serve ``app`` on a free 127.0.0.1 port in a thread; yields its URL. ``send_buffer``
    sets the kernel's send buffer of the connections it accepts (they inherit it);
    ``uvicorn_options`` go to uvicorn's Config."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=5, **uvicorn_options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the server did not start")
        if wait_ready:
            wait_until(
                lambda: httpx.get(f"{url}/health").status_code == 200, "the model did not load"
            )
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_until(condition: Callable[[], bool], message: str, timeout: float = 60.0) -> None:
    """Polls for a state the test has made certain (a load, an abort while the engine is
    held), however slowly a loaded machine gets there."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(0.02)


@contextmanager
def live_server(
    model_dir: Path,
    api_key: str | None = API_KEY,
    settings: dict | None = None,
    send_buffer: int | None = None,
    **engine,
) -> Iterator[LiveServer]:
    config = EngineConfig(model=str(model_dir), **{**ENGINE_DEFAULTS, **engine})
    # NOTE: the suite sends hundreds of bad requests from one address on purpose; the
    # refusal budget is off unless a test turns it on.
    settings = {"max_client_errors_per_minute": 0, **(settings or {})}
    server_settings = ServerSettings(api_key=api_key, **settings)
    app = create_app(server_settings, lambda: AsyncLLM(config))
    with running(app, send_buffer=send_buffer) as url:
        yield LiveServer(url, app, api_key)


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[LiveServer]:
    """One server per test module, with an API key."""
    with live_server(tiny_llama) as live:
        yield live


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def vlm_server(tiny_llava: Path) -> Iterator[LiveServer]:
    """One server over the tiny LLaVA per test module, with an API key."""
    with live_server(tiny_llava) as live:
        yield live


def sse_events(raw: str) -> list[str]:
    """The events of an SSE body, framing checked: each ends with a blank line, and
    holds either comment lines (keep-alives, returned as ":") or one ``data:`` line."""
    assert raw.endswith("\n\n"), f"the stream does not end with a blank line: {raw[-50:]!r}"
    events = []
    for block in raw[:-2].split("\n\n"):
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            events.append(":")
            continue
        assert len(lines) == 1 and lines[0].startswith("data: "), f"bad event {block!r}"
        events.append(lines[0][len("data: ") :])
    return events


def sse_chunks(raw: str) -> list[dict]:
    """The JSON chunks of an SSE body that must end with ``data: [DONE]``."""
    events = [event for event in sse_events(raw) if event != ":"]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]
