"""ASGI middleware: request ids, the API key, JSON bodies only, and the body's size and
read time.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which buffers and re-wraps
responses: these must not get between an SSE stream and its client, nor hide the
client's disconnect from the stream.
"""

from __future__ import annotations

import hmac
import re
import uuid

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError

# Reachable without the key: load balancers and orchestrators probe it.
PUBLIC_PATHS = frozenset({"/health"})
# What a client may send as X-Request-Id: the characters of ids people use (UUIDs,
# "req_...", trace ids), bounded so that it is safe to log and to echo.
CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


class RequestIdMiddleware:
    """Every response carries ``X-Request-Id``: the client's own, echoed (a malformed one
    is a 400), else the id the endpoint gave (a completion's id) or a new ``req-<hex>``.
    A client's id is in ``request.state.client_request_id`` for the logs."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id")
        valid = given is not None and CLIENT_REQUEST_ID.fullmatch(given) is not None

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                own = [v for k, v in headers if k == b"x-request-id"]
                request_id = given if valid else own[0] if own else new_request_id()
                headers = [(k, v) for k, v in headers if k != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id)]}
            await send(message)

        if given is not None and not valid:
            error = APIError(
                400,
                "the X-Request-Id header must be 1 to 128 characters of letters, digits "
                "and ._:/+=-",
                param="X-Request-Id",
            )
            await error.response()(scope, receive, send_with_id)
            return
        if valid:
            scope.setdefault("state", {})["client_request_id"] = given.decode()
        await self.app(scope, receive, send_with_id)


def new_request_id() -> bytes:
    return f"req-{uuid.uuid4().hex}".encode()


class APIKeyMiddleware:
    """Every route but ``public_paths`` needs ``Authorization: Bearer <key>``."""

    def __init__(self, app: ASGIApp, api_key: str, public_paths: frozenset[str] = PUBLIC_PATHS):
        self.app = app
        self.expected = api_key.encode()
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        # NOTE: the scheme is case-insensitive (RFC 7235); the key is compared in constant
        # time, so response timing does not leak how much of a guess matched.
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        message = "invalid or missing API key (send it as 'Authorization: Bearer <key>')"
        error = APIError(
            401,
            message,
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)


class JSONOnlyMiddleware:
    """POST bodies must say ``Content-Type: application/json`` (415 otherwise). A web
    page may POST ``text/plain`` to any origin without a CORS preflight; refusing it
    keeps pages in a user's browser from driving a server on their machine or LAN."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            content_type = dict(scope["headers"]).get(b"content-type", b"")
            if content_type.partition(b";")[0].strip().lower() != b"application/json":
                error = APIError(
                    415,
                    "the request body must be JSON, sent with 'Content-Type: application/json'",
                    code="unsupported_media_type",
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answers 413 to a body over ``max_bytes``: at once when Content-Length says so,
    else as soon as the (chunked) body grows past it; 408 to one not received within
    ``timeout`` seconds (a client sending it a byte at a time holds a connection). The
    body is read here and handed on whole, which for JSON requests of a few MiB costs
    nothing the handler would not spend anyway."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        with anyio.move_on_after(self.timeout) as read:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break  # the client went away; the app sees the disconnect below
                body += message.get("body", b"")
                if len(body) > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
                if not message.get("more_body", False):
                    break
        if read.cancelled_caught:
            error = APIError(
                408,
                f"the request body did not arrive within {self.timeout:g} s",
                code="request_timeout",
                headers={"Connection": "close"},
            )
            await error.response()(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                # After the body, receive() waits for the disconnect: streams need it.
                return await receive()
            replayed = True
            if message["type"] != "http.request":
                return message
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            413,
            f"the request body is larger than the limit of {self.max_bytes} bytes",
            param=None,
            code="request_too_large",
        )
        await error.response()(scope, receive, send)
