"""What chat and text completions share: running a Generation and answering with one
JSON body or an SSE stream of chunks."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from engine import EngineError, RequestOutput
from server.errors import engine_error, internal_error, unavailable
from server.generation import ClientGone, Generation, ShuttingDown
from server.settings import ServerSettings

logger = logging.getLogger(__name__)


class ResponseFormat(ABC):
    """How an endpoint writes its bodies and chunks. Subclasses fill in the choices."""

    object_name = ""
    chunk_object_name = ""

    def __init__(
        self, request_id: str, model: str, created: int, fingerprint: str, stream_usage: bool
    ):
        self.request_id = request_id
        self.model = model
        self.created = created
        self.fingerprint = fingerprint
        # OpenAI sends "usage": null in every chunk when the final chunk will carry it.
        self.stream_usage = stream_usage

    def _head(self, object_name: str) -> dict:
        return {
            "id": self.request_id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def chunk(self, choices: list[dict]) -> dict:
        chunk = {**self._head(self.chunk_object_name), "choices": choices}
        if self.stream_usage:
            chunk["usage"] = None
        return chunk

    def response(self, finals: list[RequestOutput], usage: dict) -> dict:
        choices = [self.choice(index, output) for index, output in enumerate(finals)]
        return {**self._head(self.object_name), "choices": choices, "usage": usage}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._head(self.chunk_object_name), "choices": [], "usage": usage}

    @abstractmethod
    def choice(self, index: int, output: RequestOutput) -> dict:
        """A whole choice of a body that is not streamed."""

    def first_chunks(self, num_choices: int) -> list[dict]:
        return []

    @abstractmethod
    def delta_chunks(self, index: int, output: RequestOutput) -> list[dict]:
        """The chunks of what ``output`` adds to choice ``index`` (none, if nothing)."""

    @abstractmethod
    def finish_chunk(self, index: int, output: RequestOutput) -> dict:
        """The chunk that ends choice ``index`` with its finish reason."""


async def respond(
    request: Request,
    generation: Generation,
    fmt: ResponseFormat,
    stream: bool,
    settings: ServerSettings,
) -> Response:
    headers = {"X-Request-Id": generation.request_id}
    if stream:
        return GenerationStream(generation, fmt, settings, headers)
    generation.close_on_disconnect(request)
    try:
        finals = await generation.final_outputs()
    except ClientGone:
        # Nobody reads this; the status is what access logs show for it (nginx's).
        return Response(status_code=499)
    except ShuttingDown:
        raise unavailable("the server is shutting down", "shutting_down") from None
    return JSONResponse(fmt.response(finals, generation.usage(finals)), headers=headers)


class GenerationStream(EventSourceResponse):
    """The SSE stream of a Generation: ``data: {chunk}`` events, blank-line separated,
    ending in ``data: [DONE]``, with keep-alive comments while no tokens come. A failure
    after the stream started is sent as an ``{"error": ...}`` event (the status is
    already 200). On shutdown the stream may finish within the grace period; after it,
    it gets an error event and ends."""

    def __init__(
        self,
        generation: Generation,
        fmt: ResponseFormat,
        settings: ServerSettings,
        headers: dict[str, str],
    ):
        shutdown = anyio.Event()
        generation.close_on_shutdown(shutdown, settings.shutdown_grace_seconds)
        super().__init__(
            _events(generation, fmt),
            headers=headers,
            ping=settings.keepalive_seconds,
            sep="\n",
            shutdown_event=shutdown,
            # NOTE: longer than our own grace, so our farewell event goes out before
            # sse-starlette cancels the stream.
            shutdown_grace_period=settings.shutdown_grace_seconds + 1,
            # A client that stops reading fills its socket's buffers and then blocks our
            # send; past this the response ends (SendTimeoutError) and close() below
            # aborts its generations.
            send_timeout=settings.stream_send_timeout_seconds,
        )
        self.generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            logger.info("request %s: the client stopped reading", self.generation.request_id)
        finally:
            # The stream may end before its body iterator ever ran (the client left at
            # once): the engine requests and admission must be given back regardless.
            self.generation.close()


async def _events(generation: Generation, fmt: ResponseFormat) -> AsyncIterator[str]:
    latest: list[RequestOutput | None] = [None] * generation.num_choices
    try:
        for chunk in fmt.first_chunks(generation.num_choices):
            yield _json(chunk)
        async for index, output in generation.outputs():
            latest[index] = output
            for chunk in fmt.delta_chunks(index, output):
                yield _json(chunk)
            if output.finished:
                yield _json(fmt.finish_chunk(index, output))
        if fmt.stream_usage:
            yield _json(fmt.usage_chunk(generation.usage(latest)))
    except ShuttingDown:
        yield _json(unavailable("the server is shutting down", "shutting_down").body())
    except EngineError as e:
        yield _json(engine_error(e).body())
    except Exception:
        logger.exception("request %s failed", generation.request_id)
        yield _json(internal_error(generation.request_id).body())
    yield "[DONE]"


def _json(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
