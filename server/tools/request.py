"""A chat request's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, checked, as
what the answer needs: the definitions for the chat template, how its text is parsed,
and the constraint on its decoding.

- no tools (or ``tools: []``): nothing changes;
- ``"none"``: the tools are shown to the model, its text is not parsed;
- ``"auto"`` (the default with tools): the template's format is parsed (registry.py);
- ``"required"`` / a named function: decoding is constrained to a call (forced.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from engine.structured import StructuredOutputSpec
from server.errors import bad_request
from server.protocol import ChatCompletionRequest
from server.tools.forced import (
    NamedCallParser,
    RequiredCallsParser,
    parameters_schema,
    required_schema,
)
from server.tools.parser import ToolParser


@dataclass(frozen=True)
class ToolRequest:
    """``definitions`` go to the chat template (None: no tools); ``new_parser`` makes one
    choice's parser (None: the text is not parsed); ``structured`` constrains decoding.
    ``calls_finish_reason`` is the finish reason of an answer with calls: "tool_calls",
    but "stop" when the request named the function (as OpenAI answers)."""

    definitions: list[dict] | None = None
    new_parser: Callable[[], ToolParser] | None = None
    structured: StructuredOutputSpec | None = None
    calls_finish_reason: str = "tool_calls"


def tool_request(body: ChatCompletionRequest, template_parser: type[ToolParser]) -> ToolRequest:
    """What ``body`` asks; a 400 naming the field for tools or a choice we cannot serve.
    ``template_parser``: the format of the model's template (or --tool-call-parser)."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools to choose from", param="tool_choice")
        return ToolRequest()
    functions = _functions(body)
    definitions = [tool.model_dump(exclude_none=True) for tool in body.tools]
    names = frozenset(function["name"] for function in functions)
    if choice == "none":
        return ToolRequest(definitions)
    if choice in (None, "auto"):
        return ToolRequest(definitions, partial(template_parser, names))
    if choice == "required":
        schema = required_schema(functions, body.parallel_tool_calls)
        return ToolRequest(definitions, partial(RequiredCallsParser, names), _spec(schema))
    name = choice["function"]["name"]
    function = next((f for f in functions if f["name"] == name), None)
    if function is None:
        raise bad_request(
            f"tool_choice names the function {name!r}, which tools does not declare",
            param="tool_choice",
        )
    parser = partial(NamedCallParser, frozenset({name}))
    return ToolRequest(definitions, parser, _spec(parameters_schema(function)), "stop")


def _functions(body: ChatCompletionRequest) -> list[dict]:
    functions = []
    for i, tool in enumerate(body.tools or []):
        function = tool.function.model_dump(exclude_none=True)
        kind = (function.get("parameters") or {}).get("type", "object")
        if kind != "object":
            raise bad_request(
                f"tools[{i}].function.parameters must be a JSON schema of an object "
                f"(its type is {json.dumps(kind)[:40]})",
                param="tools",
            )
        if any(f["name"] == function["name"] for f in functions):
            raise bad_request(
                f"tools[{i}] declares the function {function['name']!r} a second time",
                param="tools",
            )
        functions.append(function)
    return functions


def _spec(schema: dict) -> StructuredOutputSpec:
    # The schema is built from the tools' parameters: what the library refuses is theirs.
    return StructuredOutputSpec(json_schema=json.dumps(schema), source="tools")
