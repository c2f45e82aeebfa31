"""The budget of refused requests per client address (server/client_budget.py)."""

from __future__ import annotations

import asyncio
import functools
import json

import httpx
import pytest

from server import app as server_app
from server import client_budget
from server.client_budget import ClientErrorBudget, ClientErrorBudgetMiddleware
from tests.server.conftest import live_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_spent_budget_refills_evenly_over_the_minute():
    clock = FakeClock()
    budget = ClientErrorBudget(per_minute=3, clock=clock)
    for _ in range(3):
        assert budget.retry_after("10.0.0.1") is None
        budget.charge("10.0.0.1")
    assert budget.retry_after("10.0.0.1") == pytest.approx(20.0)
    assert budget.retry_after("10.0.0.2") is None  # an address of its own
    clock.now += 19.0
    assert budget.retry_after("10.0.0.1") == pytest.approx(1.0)
    clock.now += 1.0
    assert budget.retry_after("10.0.0.1") is None
    clock.now += 3600.0  # idle for an hour: back to a full budget, no more
    for _ in range(3):
        budget.charge("10.0.0.1")
    assert budget.retry_after("10.0.0.1") is not None


def test_the_addresses_remembered_are_bounded(monkeypatch):
    monkeypatch.setattr(client_budget, "MAX_CLIENTS", 2)
    budget = ClientErrorBudget(per_minute=1, clock=FakeClock())
    for address in ("a", "b", "c"):
        budget.charge(address)
    assert list(budget.buckets) == ["b", "c"]


def test_a_budget_needs_one_refusal_at_least():
    with pytest.raises(ValueError, match="per_minute must be >= 1"):
        ClientErrorBudget(per_minute=0)


class RecordingApp:
    """An ASGI app that reads the body and answers with ``status``."""

    def __init__(self) -> None:
        self.status = 400
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        await receive()
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def call(app, path: str = "/v1/chat/completions", client: str = "10.0.0.1") -> tuple[list, int]:
    """(messages sent, times the body was read) for one request to ``app``."""
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "client": (client, 1)}
    reads = 0
    sent: list = []

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b'{"x": 1}', "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, reads


class FakeSleep:
    """Records the waits and lets the fake clock's time pass."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.now += seconds


def budget_app(inner, per_minute: int) -> tuple[ClientErrorBudgetMiddleware, FakeSleep]:
    clock = FakeClock()
    sleep = FakeSleep(clock)
    budget = ClientErrorBudget(per_minute=per_minute, clock=clock)
    return ClientErrorBudgetMiddleware(inner, budget, sleep=sleep), sleep


def test_an_address_out_of_budget_waits_then_gets_429_before_its_body_is_read():
    inner = RecordingApp()
    app, sleep = budget_app(inner, per_minute=2)
    for _ in range(2):
        sent, reads = call(app)
        assert sent[0]["status"] == 400 and reads == 1
    assert sleep.waits == []
    sent, reads = call(app)
    assert (sent[0]["status"], reads, inner.calls) == (429, 0, 2)
    assert sleep.waits == [client_budget.TARPIT_SECONDS]
    headers = dict(sent[0]["headers"])
    assert headers[b"retry-after"] == b"29"  # 30 s to refill one, a second waited
    assert headers[b"connection"] == b"close"
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["message"] == "too many refused requests from this address: retry in 29 s"
    # Another address, and the health probe of this one, are served as before.
    assert call(app, client="10.0.0.2")[0][0]["status"] == 400
    inner.status = 200
    assert call(app, path="/health")[0][0]["status"] == 200


def test_a_request_is_served_when_the_budget_refills_during_its_wait():
    inner = RecordingApp()
    app, sleep = budget_app(inner, per_minute=120)  # one refusal back every half second
    for _ in range(120):
        call(app)
    inner.status = 200
    sent, reads = call(app)
    assert (sent[0]["status"], reads, sleep.waits) == (200, 1, [pytest.approx(0.5)])


def test_good_requests_are_not_charged():
    inner = RecordingApp()
    inner.status = 200
    app, sleep = budget_app(inner, per_minute=1)
    for _ in range(5):
        assert call(app)[0][0]["status"] == 200
    assert app.budget.retry_after("10.0.0.1") is None


def test_a_flooding_address_is_throttled_and_others_are_served(tiny_llama, monkeypatch):
    # A clock that stands still: however slow the machine, no refusal comes back.
    frozen = functools.partial(ClientErrorBudget, clock=lambda: 0.0)
    monkeypatch.setattr(server_app, "ClientErrorBudget", frozen)
    monkeypatch.setattr(client_budget, "TARPIT_SECONDS", 0.01)
    settings = {"max_client_errors_per_minute": 2}
    with live_server(tiny_llama, api_key=None, settings=settings) as server:
        flooder = httpx.Client(base_url=server.url, timeout=60)
        neighbour = httpx.Client(
            base_url=server.url,
            timeout=60,
            transport=httpx.HTTPTransport(local_address="127.0.0.2"),
        )
        bad = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
        statuses = [flooder.post("/v1/chat/completions", **bad).status_code for _ in range(3)]
        assert statuses == [400, 400, 429]
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert neighbour.post("/v1/chat/completions", json=chat).status_code == 200
        assert flooder.post("/v1/chat/completions", json=chat).status_code == 429
