"""Tool calling over HTTP with the openai client: tools and the call history rendered by
the chat template (as transformers renders them), calls parsed from the answer (a canned
answer forced by logit_bias), streamed and not, a whole round trip, and every bad input a
400 naming its field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from server.cli import main
from tests.server.conftest import LiveServer, live_server
from tests.server.tools_fixtures import (
    CALL_ANSWER,
    TEXT_ANSWER,
    TOOLS,
    build_tools_model,
    rendered_num_tokens,
    token_id,
)

pytestmark = pytest.mark.timeout(120)

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS = ("get_weather", {"city": "Paris"})


@pytest.fixture(scope="module")
def tools_model(tmp_path_factory) -> Path:
    return build_tools_model(tmp_path_factory.mktemp("tools"))


@pytest.fixture(scope="module")
def tools_server(tools_model: Path) -> Iterator[LiveServer]:
    with live_server(tools_model) as live:
        yield live


def forcing(model_dir: Path, text: str) -> dict:
    """A logit_bias that makes the model answer with the single token ``text``."""
    return {str(token_id(model_dir, text)): 100}


def create(server: LiveServer, **kwargs):
    kwargs.setdefault("messages", USER)
    return server.openai().chat.completions.create(model=server.model, **kwargs)


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def test_auto_call_is_parsed(tools_server: LiveServer, tools_model: Path) -> None:
    bias = forcing(tools_model, CALL_ANSWER)
    response = create(tools_server, tools=TOOLS, logit_bias=bias, max_tokens=1)
    [choice] = response.choices
    assert choice.message.content is None
    assert calls_of(choice.message) == [PARIS]
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert choice.finish_reason == "length"  # max_tokens ended it, right after the call
    # Ended by a stop string, the call's closing tag is cut off: still a call, and "stop"
    # becomes "tool_calls".
    response = create(
        tools_server, tools=TOOLS, logit_bias=bias, max_tokens=4, stop=["\n</tool_call>"]
    )
    assert calls_of(response.choices[0].message) == [PARIS]
    assert response.choices[0].finish_reason == "tool_calls"


def test_streamed_calls_reassemble(tools_server: LiveServer, tools_model: Path) -> None:
    bias = forcing(tools_model, CALL_ANSWER)
    chunks = list(
        create(
            tools_server,
            tools=TOOLS,
            logit_bias=bias,
            max_tokens=4,
            stop=["\n</tool_call>"],
            n=2,
            stream=True,
        )
    )
    for index in (0, 1):
        deltas = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        call_deltas = [tc for d in deltas for tc in d.delta.tool_calls or []]
        head, *rest = call_deltas
        assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
        assert head.function.name == "get_weather" and head.function.arguments == ""
        assert all(d.id is None and d.function.name is None for d in rest)
        arguments = "".join(d.function.arguments for d in rest)
        assert json.loads(arguments) == {"city": "Paris"}
        assert "".join(d.delta.content or "" for d in deltas) == ""
        assert deltas[-1].finish_reason == "tool_calls"


def test_openai_stream_helper_reassembles(tools_server: LiveServer, tools_model: Path) -> None:
    bias = forcing(tools_model, CALL_ANSWER)
    with tools_server.openai().chat.completions.stream(
        model=tools_server.model,
        messages=USER,
        tools=TOOLS,
        logit_bias=bias,
        max_tokens=4,
        stop=["\n</tool_call>"],
    ) as stream:
        final = stream.get_final_completion()
    assert calls_of(final.choices[0].message) == [PARIS]


def test_round_trip(tools_server: LiveServer, tools_model: Path) -> None:
    first = create(
        tools_server, tools=TOOLS, logit_bias=forcing(tools_model, CALL_ANSWER), max_tokens=1
    )
    [call] = first.choices[0].message.tool_calls
    messages = [
        *USER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    answer = create(
        tools_server,
        messages=messages,
        tools=TOOLS,
        logit_bias=forcing(tools_model, TEXT_ANSWER),
        max_tokens=1,
    )
    assert answer.choices[0].message.content == TEXT_ANSWER
    assert answer.choices[0].message.tool_calls is None
    # The history and the tools, rendered by the template as transformers renders them.
    assert answer.usage.prompt_tokens == rendered_num_tokens(tools_model, messages, TOOLS)


def test_developer_is_a_system_message(tools_server: LiveServer, tools_model: Path) -> None:
    developer = [{"role": "developer", "content": "Be brief."}, *USER]
    response = create(tools_server, messages=developer, tools=TOOLS, max_tokens=1)
    system = [{"role": "system", "content": "Be brief."}, *USER]
    assert response.usage.prompt_tokens == rendered_num_tokens(tools_model, system, TOOLS)


def test_choice_none_and_no_tools_leave_the_text(
    tools_server: LiveServer, tools_model: Path
) -> None:
    bias = forcing(tools_model, CALL_ANSWER)
    for kwargs in ({"tools": TOOLS, "tool_choice": "none"}, {}):
        response = create(tools_server, logit_bias=bias, max_tokens=1, **kwargs)
        assert response.choices[0].message.content == CALL_ANSWER
        assert response.choices[0].message.tool_calls is None
    # "none" still shows the tools to the model.
    none = create(tools_server, tools=TOOLS, tool_choice="none", max_tokens=1)
    assert none.usage.prompt_tokens == rendered_num_tokens(tools_model, USER, TOOLS)


def test_unknown_function_stays_text(tools_server: LiveServer, tools_model: Path) -> None:
    response = create(
        tools_server,
        tools=[TOOLS[1]],
        logit_bias=forcing(tools_model, CALL_ANSWER),
        max_tokens=1,
    )
    assert response.choices[0].message.content == CALL_ANSWER
    assert response.choices[0].message.tool_calls is None


def tool_call(call_id: str) -> dict:
    function = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    return {"id": call_id, "type": "function", "function": function}


CALLED = {"role": "assistant", "content": None, "tool_calls": [tool_call("call_1")]}
BAD = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools"),
    (
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
            ]
        },
        "tools",
    ),
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
    (
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "f"}}},
        "tool_choice",
    ),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [*USER, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]}, "messages"),
    (
        {"messages": [*USER, CALLED, {"role": "tool", "tool_call_id": "call_2", "content": "x"}]},
        "messages",
    ),
    ({"messages": [*USER, {"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "narrator", "content": "x"}]}, "messages"),
    ({"messages": [*USER, {**CALLED, "tool_calls": [{"id": "c", "function": {}}]}]}, "messages"),
    (
        {
            "messages": [
                *USER,
                {
                    **CALLED,
                    "tool_calls": [
                        {**tool_call("c"), "function": {"name": "f", "arguments": "[1]"}}
                    ],
                },
            ]
        },
        "messages",
    ),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [tool_call("c")]}]}, "messages"),
    ({"functions": [{"name": "f"}]}, "functions"),
]


@pytest.mark.parametrize(("body", "param"), BAD)
def test_bad_input_is_a_400_naming_the_field(tools_server: LiveServer, body: dict, param: str):
    body = {"model": tools_server.model, "messages": USER, "max_tokens": 1, **body}
    with tools_server.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_completions_refuse_tools(tools_server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        tools_server.openai().completions.create(
            model=tools_server.model, prompt="x", extra_body={"tools": TOOLS}
        )
    assert error.value.body["param"] == "tools"


def test_parser_flag_overrides_the_template(tools_model: Path) -> None:
    # The template shows <tool_call>; told that calls are bare JSON, the server leaves
    # the tagged answer as text.
    with live_server(tools_model, settings={"tool_call_parser": "json"}) as server:
        response = create(
            server, tools=TOOLS, logit_bias=forcing(tools_model, CALL_ANSWER), max_tokens=1
        )
    assert response.choices[0].message.content == CALL_ANSWER
    assert response.choices[0].message.tool_calls is None


def test_unknown_parser_flag_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--tool-call-parser", "xml"]) == 2
    assert "unknown tool-call parser 'xml'" in capsys.readouterr().err
