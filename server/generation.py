"""The engine requests behind one HTTP request, run at once and merged into one stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request

from engine import AsyncLLM, PreparedPrompt, RequestOutput, SamplingParams
from server.metrics import Metrics
from server.state import Ticket


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


class ShuttingDown(Exception):
    """The server is shutting down and the request's grace period ran out."""


class Generation:
    """Choice ``i`` generates from ``prompts[i // n]`` with ``params[i % n]``, where
    ``n = len(params)``: n choices per prompt, as OpenAI numbers them.

    ``outputs`` starts the engine requests and yields their outputs as they come, timed
    for the metrics. ``close`` aborts whatever still runs and gives the admission ticket
    back; it runs when ``outputs`` ends however it ends, and the HTTP layer calls it too,
    for the case where a response is dropped before its stream ever started.
    """

    def __init__(
        self,
        llm: AsyncLLM,
        request_id: str,
        prompts: list[PreparedPrompt],
        params: list[SamplingParams],
        ticket: Ticket,
        metrics: Metrics,
        arrival: float,
    ):
        self.llm = llm
        self.request_id = request_id
        self.prompts = prompts
        self.params = params
        self.ticket = ticket
        self.metrics = metrics
        self.arrival = arrival
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    @property
    def n(self) -> int:
        return len(self.params)

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """``(choice index, output)`` until every choice has finished. Raises what a choice
        raised (the others are aborted), or the reason given to ``close``."""
        for index in range(self.num_choices):
            self._tasks.append(asyncio.create_task(self._run_choice(index)))
        last_token_at: list[float | None] = [None] * self.num_choices
        num_running = self.num_choices
        try:
            while num_running:
                index, item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                now = time.perf_counter()
                if item.new_token_ids:
                    previous = last_token_at[index]
                    if previous is None:
                        self.metrics.first_token(now - self.arrival)
                    else:
                        self.metrics.token_gap(now - previous)
                    last_token_at[index] = now
                if item.finished:
                    num_running -= 1
                    self.metrics.finished(item, now - self.arrival)
                yield index, item
        finally:
            self.close()

    async def final_outputs(self) -> list[RequestOutput]:
        """Each choice's last output (which holds all of its text and tokens)."""
        finals: dict[int, RequestOutput] = {}
        async for index, output in self.outputs():
            finals[index] = output
        return [finals[index] for index in range(self.num_choices)]

    async def _run_choice(self, index: int) -> None:
        prompt = self.prompts[index // self.n]
        params = self.params[index % self.n]
        request_id = f"{self.request_id}-{index}"
        try:
            async for output in self.llm.generate(request_id, prompt, params):
                self._queue.put_nowait((index, output))
        except Exception as e:
            self._queue.put_nowait((index, e))

    def close(self, reason: BaseException | None = None) -> None:
        """Abort the choices still running (leaving ``generate`` aborts the engine
        request) and release the ticket; ``outputs`` then raises ``reason``, if given."""
        for task in self._tasks:
            task.cancel()
        self.ticket.release()
        if reason is not None:
            self._queue.put_nowait((-1, reason))

    def close_on_disconnect(self, request: Request) -> None:
        """For responses that are not streamed: nothing else notices a client leaving."""

        async def watch() -> None:
            # The body has been read, so the next message is the disconnect.
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.close(ClientGone())

        self._tasks.append(asyncio.create_task(watch()))

    def close_on_shutdown(self, shutdown: anyio.Event, grace_seconds: float) -> None:
        async def watch() -> None:
            await shutdown.wait()
            await asyncio.sleep(grace_seconds)
            self.close(ShuttingDown())

        self._tasks.append(asyncio.create_task(watch()))

    def usage(self, outputs: list[RequestOutput | None]) -> dict:
        """OpenAI's usage object from each choice's latest output. A prompt counts once,
        however many choices it has."""
        num_prompt = sum(prompt.num_tokens for prompt in self.prompts)
        num_generated = sum(o.num_output_tokens for o in outputs if o is not None)
        num_cached = sum(o.num_cached_tokens for o in outputs[:: self.n] if o is not None)
        return {
            "prompt_tokens": num_prompt,
            "completion_tokens": num_generated,
            "total_tokens": num_prompt + num_generated,
            "prompt_tokens_details": {"cached_tokens": num_cached},
        }
