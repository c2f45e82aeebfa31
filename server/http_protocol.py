"""uvicorn's HTTP/1.1 protocol with a deadline on request heads.

uvicorn closes idle keep-alive connections, but a connection that sends a byte of its
request head every few seconds (slowloris) stays open for as long as it likes, each one
a socket and a task of the server's. Here a request head that has not fully arrived
within ``timeout`` seconds of the connection opening (or of the previous response
ending) closes the connection.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadTimeoutH11Protocol(H11Protocol):
    head_timeout = 10.0  # seconds; head_timeout_protocol makes classes with others

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._waiting_for = self.cycle
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # NOTE: a new cycle exists once a request's head has been parsed whole.
        if self.cycle is not self._waiting_for:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._waiting_for = self.cycle
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._expire)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _expire(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def head_timeout_protocol(timeout: float) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with heads due in ``timeout``."""
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,), {"head_timeout": timeout})
