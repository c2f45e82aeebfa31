"""/v1/models, /health, /metrics, and the API key on every route but /health."""

from __future__ import annotations

import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import AsyncLLM, EngineConfig
from server.app import create_app
from server.settings import ServerSettings
from tests.server.conftest import ENGINE_DEFAULTS, LiveServer, running, wait_until
from tests.server.test_errors import assert_error

pytestmark = pytest.mark.timeout(120)


def test_models_lists_the_served_model(server: LiveServer) -> None:
    cards = server.openai().models.list().data
    assert [card.id for card in cards] == [server.model]
    with server.http() as http:
        card = http.get("/v1/models").json()["data"][0]
        assert http.get(f"/v1/models/{server.model}").json() == card
    assert card["object"] == "model" and card["owned_by"] == "edgechat"
    assert card["max_model_len"] == server.llm.max_model_len == 256
    assert card["accepts_images"] is False and card["demo"] is False


def test_served_model_name_and_demo_flag(tiny_llama) -> None:
    """The tiny model is served under another name; the demo is marked as such."""
    config = EngineConfig(model=str(tiny_llama), **ENGINE_DEFAULTS)
    app = create_app(ServerSettings(served_model_name="tiny"), lambda: AsyncLLM(config))
    with running(app) as url:
        card = httpx.get(f"{url}/v1/models").json()["data"][0]
        assert (card["id"], card["root"]) == ("tiny", str(tiny_llama))
        body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
        assert httpx.post(f"{url}/v1/completions", json=body).status_code == 200
        body["model"] = str(tiny_llama)
        assert_error(
            httpx.post(f"{url}/v1/completions", json=body), 404, "model", "model_not_found"
        )
    demo = create_app(ServerSettings(), lambda: AsyncLLM(EngineConfig(kv_cache_memory=0.05)))
    with running(demo) as url:
        card = httpx.get(f"{url}/v1/models").json()["data"][0]
        assert (card["id"], card["demo"]) == ("edgechat-demo", True)


def test_a_local_checkpoint_is_served_under_its_directory_name(tiny_llama) -> None:
    config = EngineConfig(model=str(tiny_llama), **ENGINE_DEFAULTS)
    with running(create_app(ServerSettings(), lambda: AsyncLLM(config))) as url:
        card = httpx.get(f"{url}/v1/models").json()["data"][0]
        assert (card["id"], card["root"]) == (tiny_llama.name, str(tiny_llama))
        body = {"model": tiny_llama.name, "prompt": "x", "max_tokens": 1}
        assert httpx.post(f"{url}/v1/completions", json=body).status_code == 200


ROUTES = [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/anything"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-key", "sk-test-key", "Bearer sk-test-key-and-more"]
)
def test_every_route_but_health_needs_the_key(
    server: LiveServer, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.request(method, server.url + path, headers=headers, json={})
    error = assert_error(response, 401, None, "invalid_api_key", "API key")
    assert error["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"


def test_health_needs_no_key(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/health")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def test_health_is_503_while_loading_and_after_a_failed_load(tiny_llama) -> None:
    loaded = threading.Event()
    config = EngineConfig(model=str(tiny_llama), **ENGINE_DEFAULTS)

    def slow_load() -> AsyncLLM:
        assert loaded.wait(timeout=60)
        return AsyncLLM(config)

    with running(create_app(ServerSettings(), slow_load), wait_ready=False) as url:
        response = httpx.get(f"{url}/health")
        assert (response.status_code, response.json()) == (503, {"status": "loading"})
        for method, path in [("POST", "/v1/chat/completions"), ("GET", "/v1/models")]:
            body = {"messages": [{"role": "user", "content": "hi"}]}
            response = httpx.request(method, url + path, json=body)
            assert_error(response, 503, None, "model_loading", "loading")
            assert response.headers["retry-after"] == "1"
        assert "vllm:num_requests_running" not in httpx.get(f"{url}/metrics").text
        loaded.set()
        wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, "the model did not load")
        assert httpx.get(f"{url}/v1/models").status_code == 200

    failures = []
    app = create_app(
        ServerSettings(),
        lambda: AsyncLLM(EngineConfig(model=str(tiny_llama / "missing"))),
        failures.append,
    )
    with running(app, wait_ready=False) as url:
        wait_until(lambda: len(failures) == 1, "the load did not fail")
        response = httpx.get(f"{url}/health")
        assert response.status_code == 503 and response.json()["status"] == "failed"
        # The cause (a path here) is for the log, not for whoever can reach /health.
        assert response.json()["error"] == "the model failed to load" and len(failures) == 1
        response = httpx.post(f"{url}/v1/completions", json={"prompt": "x"})
        error = assert_error(response, 503, None, "model_load_failed", "failed to load")
        assert "missing" not in error["message"]


def metric_values(text: str) -> dict[str, float]:
    """``{sample name: value}`` summed over label sets."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def test_metrics_count_what_was_served(server: LiveServer) -> None:
    with server.http() as http:
        before = metric_values(http.get("/metrics").text)
        body = {"prompt": "Count me", "max_tokens": 7, "ignore_eos": True, "n": 2}
        usage = http.post("/v1/completions", json=body).json()["usage"]
        http.post("/v1/completions", json={**body, "stream": True}).raise_for_status()
        response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = metric_values(response.text)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert grew("vllm:generation_tokens_total") == 28
    assert grew("vllm:prompt_tokens_total") == 4 * usage["prompt_tokens"]
    assert grew("vllm:request_success_total") == 4
    assert grew("vllm:time_to_first_token_seconds_count") == 4
    assert grew("vllm:inter_token_latency_seconds_count") == 4 * 6
    assert grew("vllm:e2e_request_latency_seconds_count") == 4
    assert grew("vllm:request_generation_tokens_sum") == 28
    assert grew("vllm:prefix_cache_queries_total") >= 4 * usage["prompt_tokens"]
    assert "vllm:prefix_cache_hits_total" in after and "vllm:num_preemptions_total" in after
    for gauge in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "edgechat:kv_cache_blocks_used",
    ):
        assert gauge in after
    assert after["edgechat:kv_cache_blocks_total"] == server.llm.core.block_manager.num_blocks
    assert 'model_name="' + server.model + '"' in response.text


def test_apps_in_one_process_keep_their_own_metrics(server: LiveServer, tiny_llama) -> None:
    config = EngineConfig(model=str(tiny_llama), **ENGINE_DEFAULTS)
    with server.http() as http:
        mine_before = metric_values(http.get("/metrics").text)
        with running(create_app(ServerSettings(), lambda: AsyncLLM(config))) as url:
            for _ in range(2):
                body = {"prompt": "x", "max_tokens": 3}
                httpx.post(f"{url}/v1/completions", json=body).raise_for_status()
            other = metric_values(httpx.get(f"{url}/metrics").text)
        mine_after = metric_values(http.get("/metrics").text)
    assert other["vllm:request_success_total"] == 2
    assert other["vllm:e2e_request_latency_seconds_count"] == 2
    for name in ("vllm:request_success_total", "vllm:e2e_request_latency_seconds_count"):
        assert mine_after.get(name, 0) == mine_before.get(name, 0)
