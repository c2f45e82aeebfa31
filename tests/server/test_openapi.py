"""``/openapi.json`` and ``/docs``: the schema describes the real request and response
bodies (real responses are held to its response models), the docs page loads only the
server's own files, ``--no-docs`` turns both off and ``--api-key`` guards them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib.resources import files

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from engine.demo import demo_model_dir
from server.app import create_app
from server.cli import build_parser
from server.openapi import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from server.settings import ServerSettings
from tests.server.conftest import LiveServer, live_server, sse_chunks
from tests.server.tools_fixtures import TOOLS
from tests.web.conftest import browser  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.timeout(180)

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
# An address outside the server: http(s)://..., or protocol-relative //host.
EXTERNAL = re.compile(r"https?://|(?<![:\w/])//[\w.-]+")


def client(**settings) -> TestClient:
    # Not started, so the engine never loads: the docs need none.
    return TestClient(create_app(ServerSettings(**settings), load_engine=lambda: None))


def resolve(schema: dict, node: dict) -> dict:
    prefix = "#/components/schemas/"
    if "$ref" not in node:
        return node
    assert node["$ref"].startswith(prefix)
    return schema["components"]["schemas"][node["$ref"][len(prefix) :]]


def refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_schema_describes_the_generation_bodies() -> None:
    schema = client().get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for path, fields, body, chunk in (
        ("/v1/chat/completions", {"messages", "tools"}, "ChatCompletion", "ChatCompletionChunk"),
        ("/v1/completions", {"prompt"}, "Completion", "Completion"),
    ):
        operation = schema["paths"][path]["post"]
        request = operation["requestBody"]["content"]["application/json"]["schema"]
        properties = resolve(schema, request)["properties"]
        assert fields | {"response_format", "stream", "max_tokens"} <= set(properties)
        response_format = resolve(schema, properties["response_format"]["anyOf"][0])
        assert set(response_format["properties"]["type"]["enum"]) == {
            "text",
            "json_object",
            "json_schema",
        }
        ok = operation["responses"]["200"]["content"]
        assert resolve(schema, ok["application/json"]["schema"]) is components[body]
        assert resolve(schema, ok["text/event-stream"]["schema"]) is components[chunk]
        error = operation["responses"]["400"]["content"]["application/json"]["schema"]
        envelope = resolve(schema, error)
        error_object = resolve(schema, envelope["properties"]["error"])
        assert set(error_object["required"]) == {"message", "type", "param", "code"}
        # The endpoints never answer FastAPI's validation error.
        assert "422" not in operation["responses"]
    assert "HTTPValidationError" not in components
    tool = resolve(schema, components["ChatCompletionRequest"]["properties"]["tools"]["anyOf"][0])
    assert resolve(schema, tool["items"])["properties"]["function"]
    for ref in refs(schema):
        assert resolve(schema, {"$ref": ref}), ref
    # Only the API: not the page's files nor the docs' own.
    assert set(schema["paths"]) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/metrics",
    }


def test_errors_keep_the_openai_envelope_with_docs_on() -> None:
    response = client().post("/v1/chat/completions", json={"messages": "hello"})
    assert response.status_code == 400
    ErrorResponse.model_validate(response.json())
    assert response.json()["error"]["param"] == "messages"


def test_docs_page_loads_only_the_servers_files() -> None:
    http = client()
    page = http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not EXTERNAL.search(page.text), EXTERNAL.search(page.text)
    assert "url: '/openapi.json'" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    local = [asset for asset in assets if not asset.startswith("data:")]
    assert sorted(local) == ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"]
    vendor = files("client.web") / "vendor"
    for asset, media_type in zip(sorted(local), ("text/javascript", "text/css")):
        response = http.get(asset)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        assert response.content == (vendor / asset.rpartition("/")[2]).read_bytes()


def test_no_docs_answers_404() -> None:
    assert build_parser().parse_args(["serve", "--no-docs"]).no_docs
    assert not build_parser().parse_args(["serve"]).no_docs
    http = client(docs=False)
    for path in ("/openapi.json", "/docs", "/docs/swagger-ui.css"):
        response = http.get(path)
        assert response.status_code == 404
        assert ErrorResponse.model_validate(response.json()).error.code == "unknown_url"


def test_docs_need_the_api_key() -> None:
    http = client(api_key="sk-secret")
    for path in ("/openapi.json", "/docs", "/docs/swagger-ui-bundle.js"):
        assert http.get(path).status_code == 401
        assert http.get(path, headers={"Authorization": "Bearer sk-secret"}).status_code == 200
    schema = http.get("/openapi.json", headers={"Authorization": "Bearer sk-secret"}).json()
    assert schema["security"] == [{"bearer": []}]
    assert "security" not in client().get("/openapi.json").json()


@pytest.fixture(scope="module")
def demo_server() -> Iterator[LiveServer]:
    """The demo model: a named tool choice makes it call even with random weights."""
    with live_server(demo_model_dir()) as live:
        yield live


def held(model: type[BaseModel], body: dict) -> None:
    """``body`` is exactly what ``model`` documents (its models forbid other fields)."""
    model.model_validate(body)


def test_real_responses_are_what_the_schema_says(demo_server: LiveServer) -> None:
    http = demo_server.http()
    named = {"type": "function", "function": {"name": "get_weather"}}
    # One request of each kind covers every field: a named tool choice makes a call (its
    # arguments constrained to the tool's schema, 48 tokens fit it whole), with logprobs.
    chat = {"messages": USER, "seed": 1, "tools": TOOLS, "tool_choice": named}
    chat |= {"max_tokens": 48, "logprobs": True, "top_logprobs": 2}
    body = http.post("/v1/chat/completions", json=chat).json()
    held(ChatCompletion, body)
    stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse_chunks(http.post("/v1/chat/completions", json=stream).text)
    for chunk in chunks:
        held(ChatCompletionChunk, chunk)
    assert any(choice["delta"].get("tool_calls") for c in chunks for choice in c["choices"])
    assert body["choices"][0]["message"]["tool_calls"] and body["choices"][0]["logprobs"]
    assert chunks[-1]["usage"] is not None
    completion = {"prompt": "Hello", "max_tokens": 4, "logprobs": 2, "n": 2}
    held(Completion, http.post("/v1/completions", json=completion).json())
    response = http.post("/v1/completions", json={**completion, "stream": True})
    for chunk in sse_chunks(response.text):
        held(Completion, chunk)
    held(ModelList, http.get("/v1/models").json())
    held(ModelCard, http.get(f"/v1/models/{demo_server.model}").json())
    held(ErrorResponse, http.get("/v1/models/nope").json())


def test_swagger_ui_renders_the_api_from_the_server_alone(browser) -> None:  # noqa: F811
    """In Chromium the page lists the API's operations, having loaded nothing but the
    server's own files (the network here is closed: a CDN would leave it blank)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with live_server(demo_model_dir(), api_key=None) as live:
        browser.get(f"{live.url}/docs")
        find = (By.CSS_SELECTOR, ".opblock-summary-path")
        WebDriverWait(browser, 60).until(lambda driver: driver.find_elements(*find))
        paths = {element.get_attribute("data-path") for element in browser.find_elements(*find)}
        assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= paths
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(entry => entry.name)"
        )
        assert f"{live.url}/openapi.json" in loaded
        assert all(url.startswith(f"{live.url}/") for url in loaded), loaded
