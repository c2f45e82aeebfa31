"""Mistral calls after ``[TOOL_CALLS]``: a JSON array (tokenizers up to v7)

    [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]

or, from v11 on, one ``name[ARGS]{...}`` per call, each after its own ``[TOOL_CALLS]``:

    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}

Everything from the first ``[TOOL_CALLS]`` to the end must parse, or it is text.
``[TOOL_CALLS]`` is a special token, which the engine's text leaves out, so a whole
answer that is a bare array of calls is taken too. Call ids are 9 letters and digits:
Mistral's templates refuse any other id when the conversation is sent back.
"""

from __future__ import annotations

import json

from server.tools.parser import (
    Call,
    Segment,
    ToolParser,
    as_calls,
    decode_json,
    leading_value,
    partial_marker_at_end,
    random_id,
    skip_space,
)

MARKER = "[TOOL_CALLS]"
ARGS = "[ARGS]"
ARGUMENTS_KEYS = ("arguments",)


class MistralParser(ToolParser):
    name = "mistral"

    def new_call_id(self) -> str:
        return random_id(9)

    def split(self, text: str, final: bool) -> list[Segment]:
        state, value = leading_value(text, "[", "{")
        if state == "value":
            calls = as_calls(value, self.tool_names, ARGUMENTS_KEYS)
            if calls is not None:
                return calls if final else []
        elif state == "maybe" and not final:
            return []
        start = text.find(MARKER)
        if start < 0:
            return [text if final else text[: partial_marker_at_end(text, MARKER)]]
        if not final:
            return [text[:start]]
        calls = self._calls(text, start)
        return [text] if calls is None else [text[:start], *calls]

    def _calls(self, text: str, position: int) -> list[Call] | None:
        calls: list[Call] = []
        while position < len(text):
            if not text.startswith(MARKER, position):
                return None
            position = skip_space(text, position + len(MARKER))
            found = self._array(text, position) or self._named(text, position)
            if found is None:
                return None
            calls += found[0]
            position = skip_space(text, found[1])
        return calls

    def _array(self, text: str, position: int) -> tuple[list[Call], int] | None:
        decoded = decode_json(text, position) if text.startswith("[", position) else None
        if decoded is None:
            return None
        calls = as_calls(decoded[0], self.tool_names, ARGUMENTS_KEYS)
        return None if calls is None else (calls, decoded[1])

    def _named(self, text: str, position: int) -> tuple[list[Call], int] | None:
        args = text.find(ARGS, position)
        if args < 0 or text[position:args].strip() not in self.tool_names:
            return None
        decoded = decode_json(text, args + len(ARGS))
        if decoded is None or not isinstance(decoded[0], dict):
            return None
        arguments = json.dumps(decoded[0], ensure_ascii=False)
        return [Call(text[position:args].strip(), arguments)], decoded[1]
