"""Cross-origin browser pages: allowed only for the origins the operator names."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import API_KEY, live_server

ALLOWED = "http://robot.local:3000"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


@pytest.fixture(scope="module")
def cors_server(tiny_llama):
    with live_server(tiny_llama, settings={"cors_origins": (ALLOWED,)}) as live:
        yield live


@pytest.mark.timeout(120)
def test_preflight_from_an_allowed_origin_needs_no_key(cors_server):
    response = httpx.options(
        f"{cors_server.url}/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


@pytest.mark.timeout(120)
def test_responses_carry_the_header_and_still_need_the_key(cors_server):
    headers = {"Origin": ALLOWED, "Authorization": f"Bearer {API_KEY}"}
    response = httpx.get(f"{cors_server.url}/v1/models", headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    without_key = httpx.get(f"{cors_server.url}/v1/models", headers={"Origin": ALLOWED})
    assert without_key.status_code == 401


@pytest.mark.timeout(120)
def test_other_origins_get_no_cors_headers(cors_server, server):
    stranger = {"Origin": "http://evil.test", **PREFLIGHT}
    refused = httpx.options(f"{cors_server.url}/v1/chat/completions", headers=stranger)
    assert "access-control-allow-origin" not in refused.headers
    default = httpx.options(
        f"{server.url}/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT}
    )
    assert "access-control-allow-origin" not in default.headers
