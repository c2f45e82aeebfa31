"""ASGI middleware: the API key and the body size limit.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which buffers and re-wraps
responses: these must not get between an SSE stream and its client, nor hide the
client's disconnect from the stream.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError

# Reachable without the key: load balancers and orchestrators probe it.
PUBLIC_PATHS = frozenset({"/health"})


class APIKeyMiddleware:
    """Every route but ``public_paths`` needs ``Authorization: Bearer <key>``."""

    def __init__(self, app: ASGIApp, api_key: str, public_paths: frozenset[str] = PUBLIC_PATHS):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        # NOTE: constant-time, so response timing does not leak how much of a guess matched.
        if hmac.compare_digest(given, self.expected):
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


class BodyLimitMiddleware:
    """Answers 413 to a body over ``max_bytes``: at once when Content-Length says so,
    else as soon as the (chunked) body grows past it. The body is read here and handed
    on whole, which for JSON requests of a few MiB costs nothing the handler would not
    spend anyway."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
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
