"""Disconnects, a full queue, an engine failure on one request, and many clients at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from engine import AsyncLLM
from tests.server.conftest import LiveServer, live_server, sse_chunks, wait_until
from tests.server.test_errors import assert_error
from tests.step_gate import held_steps

pytestmark = pytest.mark.timeout(120)


@contextmanager
def patched_steps(llm: AsyncLLM, before_run: Callable[[list], None]) -> Iterator[None]:
    """Calls ``before_run(batch.seqs)`` ahead of every model run (to make it fail)."""
    runner = llm.core.runner
    run = runner.run

    def patched(batch):
        before_run(batch.seqs)
        return run(batch)

    runner.run = patched
    try:
        yield
    finally:
        del runner.run


def first_data(lines: Iterator[str]) -> dict:
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line[len("data: ") :])
    raise AssertionError("the stream ended without data")


# Greedy, so the first steps' text is the same on every run.
LONG = {"prompt": "Keep going", "max_tokens": 200, "ignore_eos": True, "temperature": 0}
# Steps the engine may take before the test acts: some text, far from max_tokens.
NUM_FIRST_STEPS = 20


def test_disconnect_mid_stream_aborts_and_frees_blocks(server: LiveServer) -> None:
    block_manager = server.llm.core.block_manager
    generated_before = server.llm.core.num_generation_tokens
    with held_steps(server.llm, NUM_FIRST_STEPS), server.http() as http:
        with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
            lines = response.iter_lines()
            assert first_data(lines)["choices"][0]["text"] is not None
            assert block_manager.num_free_blocks < block_manager.num_blocks
        # Leaving the block closed the connection mid-stream; held, the engine cannot
        # have finished the request: only the abort frees its blocks.
        assert server.all_blocks_free()
        assert not server.llm.core.requests
    assert server.llm.core.num_generation_tokens - generated_before <= NUM_FIRST_STEPS


def test_disconnect_while_waiting_for_a_whole_response_aborts(server: LiveServer) -> None:
    generated_before = server.llm.core.num_generation_tokens
    with held_steps(server.llm, NUM_FIRST_STEPS), server.http() as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", json=LONG, timeout=0.5)
        assert server.all_blocks_free()
        assert not server.llm.core.requests
    assert server.llm.core.num_generation_tokens - generated_before <= NUM_FIRST_STEPS


def test_full_queue_gets_503_and_waiting_streams_get_keepalives(tiny_llama) -> None:
    settings = {"max_queued_requests": 1, "keepalive_seconds": 0.1}
    with ExitStack() as stack:
        server = stack.enter_context(live_server(tiny_llama, settings=settings, max_num_seqs=1))
        # One step: the first request's prefill, so that it runs and the second waits.
        gate = stack.enter_context(held_steps(server.llm, 1))
        http = stack.enter_context(server.http())
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100,
            "ignore_eos": True,
            "stream": True,
        }
        running = stack.enter_context(http.stream("POST", "/v1/chat/completions", json=body))
        # NOTE: keep the line iterators: one that is dropped closes its connection.
        running_lines = running.iter_lines()
        first_data(running_lines)
        wait_until(lambda: server.llm.stats().num_running == 1, "the first request running")
        queued = stack.enter_context(http.stream("POST", "/v1/chat/completions", json=body))
        queued_lines = queued.iter_lines()
        assert first_data(queued_lines)["choices"][0]["delta"]["role"] == "assistant"
        # max_num_seqs (1) running + max_queued_requests (1) waiting: full.
        for request_body in (body, {**body, "stream": False}):
            response = http.post("/v1/chat/completions", json=request_body)
            assert_error(response, 503, None, "queue_full", "capacity")
            assert response.headers["retry-after"] == "1"
        assert_error(
            http.post("/v1/chat/completions", json={**body, "n": 3}), 400, "n", None, "at once"
        )
        # The queued stream hears keep-alive comments while the first one runs.
        num_comments = 0
        for line in queued_lines:
            if line.startswith(":"):
                num_comments += 1
            if num_comments == 3:
                break
        wait_until(lambda: server.llm.stats().num_waiting == 1, "the second request queued")
        assert server.llm.stats().num_running == 1
        running.close()
        queued.close()
        assert server.all_blocks_free()
        gate.open()
        short = {**body, "stream": False, "max_tokens": 2}
        assert http.post("/v1/chat/completions", json=short).status_code == 200


POISON = 1999


def test_engine_failure_fails_only_that_request(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A model run that raises for one request's sequence fails that request (500, or an
    error event in its stream); the requests batched with it go on unharmed."""
    healthy = [[10 + i, 20 + i, 30 + i, 40 + i] for i in range(3)]
    body = {"max_tokens": 30, "temperature": 0, "ignore_eos": True}
    with server.http() as http:
        alone = [
            http.post("/v1/completions", json={**body, "prompt": p}).json()["choices"][0]["text"]
            for p in healthy
        ]

    def poison(seqs: list) -> None:
        if any(POISON in seq.prompt_token_ids for seq in seqs):
            raise RuntimeError("injected failure")

    async def scenario() -> tuple[list[str], httpx.Response, str]:
        async with httpx.AsyncClient(
            base_url=server.url, headers=server.headers, timeout=60
        ) as client:

            async def stream(prompt: list[int]) -> str:
                request = {**body, "prompt": prompt, "stream": True}
                async with client.stream("POST", "/v1/completions", json=request) as response:
                    return (await response.aread()).decode()

            streams = [asyncio.create_task(stream(p)) for p in healthy]
            failing = asyncio.create_task(
                client.post("/v1/completions", json={**body, "prompt": [5, POISON, 6]})
            )
            # All four in the engine before its first step: they run in one batch.
            while server.llm.stats().num_waiting < 4:
                await asyncio.sleep(0.01)
            gate.open()
            failed = await failing
            failed_stream = await stream([7, POISON])
            raws = await asyncio.gather(*streams)
        texts = ["".join(c["choices"][0]["text"] for c in sse_chunks(raw)) for raw in raws]
        return texts, failed, failed_stream

    with patched_steps(server.llm, poison), held_steps(server.llm) as gate:
        texts, failed, failed_stream = asyncio.run(scenario())
    assert texts == alone
    request_id = failed.headers["x-request-id"]
    error = assert_error(failed, 500, None, "internal_error", request_id)
    assert error["type"] == "server_error"
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("server")]
    assert f"request {request_id} failed" in logged
    *_, last = sse_chunks(failed_stream)
    assert last["error"]["code"] == "internal_error"
    assert server.all_blocks_free()
    with server.http() as http:
        assert http.post("/v1/completions", json={**body, "prompt": [5, POISON]}).status_code == 200


def test_concurrent_streams_each_get_what_they_get_alone(server: LiveServer) -> None:
    def request(i: int) -> dict:
        sampling = {"temperature": 0} if i % 2 else {"temperature": 0.8, "seed": i}
        return dict(
            model=server.model,
            messages=[{"role": "user", "content": f"Tell story number {i}."}],
            max_tokens=24,
            extra_body={"ignore_eos": True},
            **sampling,
        )

    async def stream_text(client, i: int) -> str:
        chunks = await client.chat.completions.create(stream=True, **request(i))
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    async def alone() -> list[str]:
        client = server.async_openai()
        return [await stream_text(client, i) for i in range(16)]

    async def together() -> list[str]:
        client = server.async_openai()
        return await asyncio.gather(*(stream_text(client, i) for i in range(16)))

    expected = asyncio.run(alone())
    assert len(set(expected)) == 16
    assert asyncio.run(together()) == expected
    assert server.all_blocks_free()
