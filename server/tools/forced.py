"""``tool_choice`` "required" and a named function: decoding is constrained to a JSON
schema of a valid call (vLLM's schemas), so the answer is the call itself, no markup.

- required: an array of ``{"name": <one of the tools>, "arguments": <its parameters>}``,
  at least one, at most one unless ``parallel_tool_calls``;
- a named function: that function's arguments object alone.

A required answer that does not parse (``max_tokens`` cut it short) stays text. A named
one is always the call: its arguments are the text as the grammar made it, so a stream
sends them as they come, and a ``max_tokens`` cut leaves them cut short (with
``finish_reason: "length"``, as OpenAI's are).
"""

from __future__ import annotations

from typing import Any

from server.tools.parser import Call, Segment, ToolParser, as_calls, decode_json, skip_space

# A function declared without parameters takes none (OpenAI's reading).
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def parameters_schema(function: dict) -> dict:
    return function.get("parameters") or NO_PARAMETERS


def required_schema(functions: list[dict], parallel: bool) -> dict[str, Any]:
    call_schemas = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [function["name"]]},
                "arguments": parameters_schema(function),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for function in functions
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": call_schemas}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def _whole_value(text: str) -> Any:
    decoded = decode_json(text, 0)
    if decoded is None or skip_space(text, decoded[1]) != len(text):
        return None
    return decoded[0]


class RequiredCallsParser(ToolParser):
    """The answer of a "required" request: the call array, once the answer is whole."""

    name = "required"

    def split(self, text: str, final: bool) -> list[Segment]:
        if not final:
            return []
        calls = as_calls(_whole_value(text), self.tool_names, ("arguments",))
        return [text] if calls is None else list(calls)


class NamedCallParser(ToolParser):
    """The answer of a request naming one function: its arguments."""

    name = "named"
    arguments_only = True

    def split(self, text: str, final: bool) -> list[Segment]:
        [function] = self.tool_names
        return [Call(function, text)] if final else []
