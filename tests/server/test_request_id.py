"""X-Request-Id on every response: the client's own echoed, else the completion's id or
a new one; a malformed one is a 400."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import LiveServer
from tests.server.test_errors import assert_error

pytestmark = pytest.mark.timeout(120)

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def test_every_response_has_an_id_and_a_completion_its_own(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as anonymous, server.http() as http:
        responses = [
            anonymous.get("/health"),
            anonymous.get("/v1/models"),  # a 401: no key
            http.get("/v1/models"),
            http.get("/no/such/route"),
            http.post("/v1/chat/completions", json={"messages": []}),
        ]
        ids = [response.headers["x-request-id"] for response in responses]
        assert [r.status_code for r in responses] == [200, 401, 200, 404, 400]
        assert all(i.startswith(("req-", "chatcmpl-")) for i in ids) and len(set(ids)) == 5
        response = http.post("/v1/chat/completions", json=CHAT)
        assert response.headers["x-request-id"] == response.json()["id"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_id_is_echoed(server: LiveServer, stream: bool) -> None:
    given = {"X-Request-Id": "trace-7f3a:span/1"}
    with server.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT | {"stream": stream}, headers=given)
        assert response.status_code == 200
        assert response.headers["x-request-id"] == given["X-Request-Id"]
        error = http.post("/v1/completions", json={}, headers=given)
        assert (error.status_code, error.headers["x-request-id"]) == (400, given["X-Request-Id"])
    unauthorized = httpx.get(f"{server.url}/v1/models", headers=given)
    assert unauthorized.headers["x-request-id"] == given["X-Request-Id"]


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "semi;colon", ""])
def test_a_malformed_client_id_is_a_400(server: LiveServer, bad: str) -> None:
    with server.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": bad})
    assert_error(response, 400, "X-Request-Id", None, "X-Request-Id")
    assert response.headers["x-request-id"].startswith("req-")
