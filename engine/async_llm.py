"""``AsyncLLM``: the engine for asyncio servers. One background thread runs the step
loop; coroutines enqueue requests and read their own per-request queues."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator

from engine.config import EngineConfig
from engine.errors import PromptTooLongError
from engine.llm_engine import EngineStats, LLMEngine
from engine.multimodal.images import ImageInput
from engine.outputs import RequestOutput
from engine.sampling import SamplingParams

logger = logging.getLogger(__name__)


class AsyncLLM:
    def __init__(self, config: EngineConfig):
        self.engine = LLMEngine(config)
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stats = self.engine.stats()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgechat-engine", daemon=True)
        self._thread.start()

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_demo(self) -> bool:
        return self.engine.is_demo

    @property
    def accepts_images(self) -> bool:
        """Whether the model is a vision-language model."""
        return self.engine.vision is not None

    def stats(self) -> EngineStats:
        """As of the end of the latest step (read without stopping the loop)."""
        return self._stats

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        return self.engine.chat_prompt(messages)

    def chat_request(self, messages: list[dict]) -> tuple[list[int], list[ImageInput]]:
        """Token ids and images of OpenAI-style messages (see ``LLMEngine.chat_request``);
        pass both to ``generate``."""
        return self.engine.chat_request(messages)

    def check_prompt(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        images: list[ImageInput] | None = None,
    ) -> list[int]:
        """Tokenize and validate a request as ``generate`` would, without queuing it, and
        return the prompt's token ids: a server answers bad input before it streams.

        Stricter than ``generate``, as OpenAI's API is: the prompt and ``max_tokens``
        together must fit the context, where the engine would stop at its end."""
        token_ids = self.engine.make_sequence("check", prompt, params, images).prompt_token_ids
        if len(token_ids) + params.max_tokens > self.max_model_len:
            raise PromptTooLongError(len(token_ids), self.max_model_len, params.max_tokens)
        return token_ids

    async def generate(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        images: list[ImageInput] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs until it finishes. Bad input raises a ValueError
        before anything is queued. Leaving the iteration early aborts the request."""
        seq = self.engine.make_sequence(request_id, prompt, params, images)
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), outputs)
        self._commands.put(("add", seq))
        finished = False
        try:
            while not finished:
                output = await outputs.get()
                if isinstance(output, BaseException):
                    raise output
                finished = output.finished
                yield output
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def shutdown(self) -> None:
        self._stopped.set()
        self._commands.put(("wake", None))
        self._thread.join(timeout=30)

    # -- the loop thread --------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._run_commands(block=not self.engine.has_unfinished)
            if self.engine.has_unfinished:
                try:
                    outputs = self.engine.step()
                except Exception as e:  # a bug, not bad input: fail the live requests, go on
                    logger.exception("engine step failed")
                    self._fail_all(e)
                    continue
                for output in outputs:
                    if output.finish_reason == "error":
                        failure = f"the engine failed on request {output.request_id!r}"
                        self._deliver(output.request_id, RuntimeError(failure))
                    else:
                        self._deliver(output.request_id, output)
            self._stats = self.engine.stats()

    def _fail_all(self, error: Exception) -> None:
        """A step failed outside any one request's work: fail every live request."""
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
            self._deliver(request_id, RuntimeError(f"the engine failed: {error}"))

    def _run_commands(self, block: bool) -> None:
        try:
            command, arg = self._commands.get(block=block)
            while True:
                self._run_command(command, arg)
                command, arg = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _run_command(self, command: str, arg) -> None:
        if command == "add":
            try:
                self.engine.add_sequence(arg)
            except ValueError as e:
                self._deliver(arg.request_id, e)
        elif command == "abort":
            self.engine.abort(arg)

    def _deliver(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            loop, outputs = stream
            loop.call_soon_threadsafe(outputs.put_nowait, item)
