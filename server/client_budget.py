"""A budget of refused requests per client address.

A client that floods the server with requests it must refuse (megabyte prompts past the
context, bodies nested 100,000 deep, thousands of stop strings, wrong API keys) costs a
body read and a JSON parse each time before the 400: on a 2-core edge box that is CPU
the streams of everyone else need. Once an address has used up its budget of refused
(4xx) requests, its next requests get a 429 before their bodies are read, until the
budget refills (the default, 12 a minute, is also the burst: bench_abuse.py measured the
normal streams' p99 with a burst of 60 at 1.1-2.4x, from ten megabyte parses in its
first seconds, and with 12 at 0.9-1.1x); each such 429 waits up to a second before it
is sent, so that a flood retrying at once costs a connection that waits, not a
request's work every millisecond.
Clients that send good requests never notice it.

The budget is keyed on the client address uvicorn reports (the X-Forwarded-For address
behind a trusted proxy). Where every client shares one address (a proxy that does not
forward it), one bad client would throttle all: raise the budget or set it to 0.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError

# Probed by load balancers, which must not be told to back off for a neighbour.
EXEMPT_PATHS = frozenset({"/health"})
# The longest a 429 waits before it is sent (less when the budget refills sooner).
TARPIT_SECONDS = 1.0
# Addresses remembered at once: bounded, so that many addresses cannot grow it without end.
MAX_CLIENTS = 4096


@dataclass
class _Bucket:
    tokens: float
    updated: float


class ClientErrorBudget:
    """A token bucket per address: ``per_minute`` refused requests, refilled evenly over
    the minute, at most ``per_minute`` at once."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self.clock = clock
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may be refused once more, or None if it may now."""
        bucket = self.buckets.get(client)
        if bucket is None:
            return None
        self._refill(bucket)
        return None if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def charge(self, client: str) -> None:
        """``client`` was refused once."""
        bucket = self.buckets.get(client)
        if bucket is None:
            bucket = self.buckets[client] = _Bucket(self.capacity, self.clock())
            if len(self.buckets) > MAX_CLIENTS:
                self.buckets.popitem(last=False)
        self._refill(bucket)
        bucket.tokens -= 1
        self.buckets.move_to_end(client)

    def _refill(self, bucket: _Bucket) -> None:
        now = self.clock()
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now


class ClientErrorBudgetMiddleware:
    """Charges every 4xx the app answers to the client's address. A request from an
    address out of budget waits (TARPIT_SECONDS at most, less if the budget refills
    sooner) and, if the budget is still spent, gets 429 and ``Retry-After`` with its
    body unread; the connection is closed rather than drained of that body."""

    def __init__(
        self,
        app: ASGIApp,
        budget: ClientErrorBudget,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ):
        self.app = app
        self.budget = budget
        self.sleep = sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or client is None or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        address = client[0]
        wait = self.budget.retry_after(address)
        if wait is not None:
            await self.sleep(min(wait, TARPIT_SECONDS))
            wait = self.budget.retry_after(address)
        if wait is not None:
            seconds = math.ceil(wait)
            error = APIError(
                429,
                f"too many refused requests from this address: retry in {seconds} s",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(seconds), "Connection": "close"},
            )
            await error.response()(scope, receive, send)
            return

        async def charging_refusals(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                self.budget.charge(address)
            await send(message)

        await self.app(scope, receive, charging_refusals)
