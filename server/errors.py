"""OpenAI error objects: how every failure looks on the wire, whatever raised it."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import EngineError, PromptTooLongError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        # NOTE: a message may quote the request (a role, a URL); quoting a lone
        # surrogate must not make the error itself unencodable.
        message = message.encode("utf-8", "replace").decode("utf-8")
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unavailable(message: str, code: str) -> APIError:
    return APIError(503, message, type="server_error", code=code, headers={"Retry-After": "1"})


def engine_error(error: EngineError, prompt_param: str | None = None) -> APIError:
    """A 400 for bad input the engine refused (all its errors are about the request).
    ``prompt_param`` names the field that held the prompt, if this one is about it."""
    if isinstance(error, PromptTooLongError):
        return bad_request(str(error), prompt_param, "context_length_exceeded")
    # A sampling parameter's name is the request field's (server/params.py keeps them so).
    param = getattr(error, "param", None)
    return bad_request(str(error), param or prompt_param)


def internal_error(request_id: str) -> APIError:
    message = f"internal error while serving request {request_id}; see the server log"
    return APIError(500, message, type="server_error", code="internal_error")


Endpoint = Callable[[Request], Awaitable[Response]]


def openai_endpoint(id_prefix: str) -> Callable[[Endpoint], Endpoint]:
    """Give each request an id (``request.state.request_id``, ``{id_prefix}-{hex}``, also
    sent as ``X-Request-Id``) and its arrival time (``request.state.arrival``,
    perf_counter seconds). Answer APIErrors as they say, the engine's errors with 400s,
    and anything unexpected with a 500 whose log line names the request."""

    def decorate(handler: Endpoint) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            request.state.arrival = time.perf_counter()
            request_id = request.state.request_id = f"{id_prefix}-{uuid.uuid4().hex}"
            try:
                return await handler(request)
            except APIError as e:
                error = e
            except EngineError as e:
                error = engine_error(e)
            except Exception:
                client_id = getattr(request.state, "client_request_id", None)
                sent = f" (X-Request-Id {client_id})" if client_id else ""
                logger.exception("request %s%s failed", request_id, sent)
                error = internal_error(request_id)
            response = error.response()
            response.headers["X-Request-Id"] = request_id
            return response

        return endpoint

    return decorate


def install_error_handlers(app: FastAPI) -> None:
    """Starlette's own 404/405 (unknown route or method) as OpenAI errors, instead of
    ``{"detail": ...}``."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = f"{exc.detail}: {request.method} {request.url.path}"
        code = "unknown_url" if exc.status_code == 404 else None
        return APIError(exc.status_code, message, code=code, headers=exc.headers).response()

    app.add_exception_handler(StarletteHTTPException, http_error)
