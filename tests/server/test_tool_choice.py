"""``tool_choice`` "required" and a named function over HTTP: decoding constrained to a
call, so even a model with random weights, sampling at temperature 1, answers only
valid calls (the name one of the tools, the arguments valid against its schema)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from engine.demo import demo_model_dir
from tests.server.conftest import LiveServer, live_server
from tests.server.tools_fixtures import TOOLS

pytestmark = pytest.mark.timeout(180)

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """The demo model, whose template does not even show the tools: the constraint
    alone makes the calls."""
    with live_server(demo_model_dir()) as live:
        yield live


def check_arguments(name: str, arguments: str) -> None:
    """``arguments`` is a JSON object valid against the test tool ``name``'s schema
    (flat objects of enums, some required, no others)."""
    schema = SCHEMAS[name]
    value = json.loads(arguments)
    assert isinstance(value, dict)
    assert set(schema["required"]) <= set(value) <= set(schema["properties"])
    for key, item in value.items():
        assert item in schema["properties"][key]["enum"]


def create(server: LiveServer, **kwargs):
    kwargs = {"temperature": 1.0, "max_tokens": 64, **kwargs}
    return server.openai().chat.completions.create(
        model=server.model, messages=USER, tools=TOOLS, **kwargs
    )


@pytest.mark.parametrize(("parallel", "seeds"), [(False, range(2)), (True, range(1))])
def test_required_gives_valid_calls(server: LiveServer, parallel: bool, seeds: range) -> None:
    for seed in seeds:
        response = create(
            server,
            tool_choice="required",
            parallel_tool_calls=parallel,
            seed=seed,
            max_tokens=256,
        )
        [choice] = response.choices
        assert choice.finish_reason == "tool_calls", choice
        calls = choice.message.tool_calls
        assert calls and (parallel or len(calls) == 1)
        for call in calls:
            assert call.type == "function" and call.id.startswith("call_")
            check_arguments(call.function.name, call.function.arguments)


def test_named_function_gives_its_call(server: LiveServer) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    for seed in range(2):
        response = create(server, tool_choice=named, seed=seed)
        [choice] = response.choices
        # OpenAI answers a forced function with "stop".
        assert choice.finish_reason == "stop", choice
        [call] = choice.message.tool_calls
        assert call.function.name == "get_time"
        check_arguments("get_time", call.function.arguments)
        assert choice.message.content is None


def test_required_streamed_equals_whole(server: LiveServer) -> None:
    whole = create(server, tool_choice="required", seed=7)
    chunks = list(create(server, tool_choice="required", seed=7, stream=True))
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            name, arguments = calls.setdefault(delta.index, ["", ""])
            calls[delta.index] = [
                name + (delta.function.name or ""),
                arguments + (delta.function.arguments or ""),
            ]
    expected = [
        [c.function.name, c.function.arguments] for c in whole.choices[0].message.tool_calls
    ]
    assert [calls[i] for i in sorted(calls)] == expected
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_cut_short_call_is_text_with_length(server: LiveServer) -> None:
    response = create(server, tool_choice="required", seed=0, max_tokens=3)
    [choice] = response.choices
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is None and choice.message.content.startswith("[")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_parameters_schema_the_library_refuses_is_a_400(server: LiveServer, choice) -> None:
    parameters = {"type": "object", "properties": {"a": {"type": "bogus"}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    body = {"messages": USER, "tools": tools, "tool_choice": choice, "max_tokens": 2}
    with server.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "tools" and "bogus" in error["message"]


def test_forced_call_and_response_format_is_a_400(server: LiveServer) -> None:
    body = {
        "messages": USER,
        "tools": TOOLS,
        "tool_choice": "required",
        "response_format": {"type": "json_object"},
    }
    with server.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tool_choice"


def test_named_arguments_stream_in_fragments(server: LiveServer) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    whole = create(server, tool_choice=named, seed=3)
    chunks = list(create(server, tool_choice=named, seed=3, stream=True))
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    head, *fragments = deltas
    assert head.id.startswith("call_") and head.function.name == "get_time"
    assert len(fragments) > 1, "the arguments stream as they are generated"
    [call] = whole.choices[0].message.tool_calls
    assert "".join(f.function.arguments for f in fragments) == call.function.arguments
    check_arguments("get_time", call.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "stop"
