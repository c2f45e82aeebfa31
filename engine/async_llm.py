"""``AsyncLLM``: the engine for asyncio servers.

Threads: intake (tokenizing, chat templates, images) runs in worker threads through
``prepare``/``prepare_chat``, in two bounded pools of the engine's own (not asyncio's
default executor, which the rest of the process shares): one for text, one for requests
that bring images, so image URLs that never answer cannot hold up text prompts. One
background thread runs the engine core's step loop and hands each request's token deltas
to its stream; each stream turns its deltas into outputs (text, stop strings) on the
asyncio side, so the loop thread does nothing but keep the model busy.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from engine.config import EngineConfig
from engine.core import EngineStats, TokenDelta
from engine.inputs import PreparedPrompt
from engine.llm_engine import LLMEngine
from engine.multimodal.images import ImageInput
from engine.multimodal.requests import has_images
from engine.outputs import RequestOutput
from engine.sampling import SamplingParams

logger = logging.getLogger(__name__)

# Tokenizing is CPU work: more threads than this only take turns with the model's host
# side. Image fetches mostly wait on the network, so that pool is larger.
NUM_TEXT_INTAKE_THREADS = 2
NUM_MEDIA_INTAKE_THREADS = 8

T = TypeVar("T")


class AsyncLLM:
    def __init__(self, config: EngineConfig):
        self.engine = LLMEngine(config)
        self.core = self.engine.core
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stats = self.core.stats()
        self._stopped = threading.Event()
        self._text_intake = ThreadPoolExecutor(NUM_TEXT_INTAKE_THREADS, "edgechat-intake")
        self._media_intake = ThreadPoolExecutor(NUM_MEDIA_INTAKE_THREADS, "edgechat-media")
        self._thread = threading.Thread(target=self._loop, name="edgechat-engine", daemon=True)
        self._thread.start()

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def max_num_seqs(self) -> int:
        """How many requests generate at once; more wait in the engine's queue."""
        return self.engine.config.max_num_seqs

    @property
    def is_demo(self) -> bool:
        return self.engine.is_demo

    @property
    def accepts_images(self) -> bool:
        """Whether the model is a vision-language model."""
        return self.engine.vision is not None

    @property
    def accepts_videos(self) -> bool:
        """Whether the model takes ``video_url`` parts (a video loader of its own)."""
        return self.engine.vision is not None and self.engine.vision.videos is not None

    @property
    def chat_template(self) -> str | None:
        """The chat template's Jinja text (None without one), e.g. to tell its formats."""
        return self.engine.inputs.chat_template.source

    def stats(self) -> EngineStats:
        """As of the end of the latest step (read without stopping the loop)."""
        return self._stats

    # -- intake -------------------------------------------------------------------------

    async def prepare(
        self, prompt: str | list[int], images: list[ImageInput] | None = None
    ) -> PreparedPrompt:
        """Tokenize and validate a prompt, in an intake thread (see ``InputProcessor``)."""
        return await self._intake(self._text_intake, self.engine.inputs.prepare, prompt, images)

    async def prepare_chat(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        continue_final_message: bool = False,
    ) -> PreparedPrompt:
        """Render (with ``tools``, OpenAI tool definitions, if given; continuing the
        final message if asked), tokenize and validate OpenAI-style messages, fetching
        and decoding their images, in an intake thread."""
        pool = self._media_intake if has_images(messages) else self._text_intake
        work = self.engine.inputs.prepare_chat
        return await self._intake(pool, work, messages, tools, continue_final_message)

    @staticmethod
    async def _intake(pool: ThreadPoolExecutor, work: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, work, *args)

    async def check_params(self, prompt: PreparedPrompt, params: SamplingParams) -> None:
        """Check ``params`` for ``prompt`` as strictly as OpenAI's API does: the prompt
        and ``max_tokens`` together must fit the context. A structured output's grammar
        is compiled here, in an intake thread (a new schema takes milliseconds, which the
        event loop should not spend); other checks are cheap and run inline."""
        check = self.engine.inputs.check_params
        if params.structured is None:
            check(prompt, params, fit_max_tokens=True)
        else:
            await self._intake(self._text_intake, check, prompt, params, True)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of text-only ``messages`` (blocking; see ``LLMEngine.chat_prompt``)."""
        return self.engine.chat_prompt(messages)

    # -- generation ---------------------------------------------------------------------

    async def generate(
        self,
        request_id: str,
        prompt: str | list[int] | PreparedPrompt,
        params: SamplingParams,
        images: list[ImageInput] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs until it finishes. Bad input raises a ValueError
        before anything is queued. Leaving the iteration early aborts the request."""
        if not isinstance(prompt, PreparedPrompt):
            prompt = await self.prepare(prompt, images)
        seq = self.engine.inputs.make_sequence(request_id, prompt, params)
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        state = self.engine.outputs.new_request(request_id, seq.prompt_token_ids, params)
        deltas: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), deltas)
        self._commands.put(("add", seq))
        try:
            while state.finish_reason is None:
                delta = await deltas.get()
                if isinstance(delta, BaseException):
                    raise delta
                output = state.apply(delta)
                if output.finish_reason == "error":
                    raise RuntimeError(f"the engine failed on request {request_id!r}")
                yield output
        finally:
            self._streams.pop(request_id, None)
            # NOTE: a stop string ends the output before the core knows of it.
            if state.finish_reason is None or state.needs_abort:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def shutdown(self) -> None:
        for pool in (self._text_intake, self._media_intake):
            pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        self._commands.put(("wake", None))
        self._thread.join(timeout=30)

    # -- the loop thread --------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._run_commands(block=not self.core.has_unfinished)
            if self.core.has_unfinished:
                try:
                    deltas = self.core.step()
                except Exception as e:  # a bug, not bad input: fail the live requests, go on
                    logger.exception("engine step failed")
                    self._fail_all(e)
                    continue
                for delta in deltas:
                    self._deliver(delta.request_id, delta)
            self._stats = self.core.stats()

    def _fail_all(self, error: Exception) -> None:
        """A step failed outside any one request's work: fail every live request."""
        for request_id in list(self.core.requests):
            self.core.abort(request_id)
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
                self.core.add(arg)
            except ValueError as e:
                self._deliver(arg.request_id, e)
        elif command == "abort":
            self.core.abort(arg)

    def _deliver(self, request_id: str, item: TokenDelta | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            loop, deltas = stream
            loop.call_soon_threadsafe(deltas.put_nowait, item)
