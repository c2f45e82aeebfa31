"""Hermes-style calls, as Qwen2.5, Qwen3 and Hermes 2/3 templates write them:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call, anywhere in the answer, text before and between them. A block that
does not hold one well-formed call of a declared tool stays text, tags and all. The last
block may lack its closing tag (the answer ended right after the JSON). A whole answer
that is a bare call object (Qwen2.5-Coder's habit) is a call too.
"""

from __future__ import annotations

from server.tools.bare_json import ARGUMENTS_KEYS, whole_answer_call
from server.tools.parser import (
    Segment,
    ToolParser,
    as_call,
    decode_json,
    partial_marker_at_end,
    skip_space,
)

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


class HermesParser(ToolParser):
    name = "hermes"

    def split(self, text: str, final: bool) -> list[Segment]:
        state, call = whole_answer_call(text, self.tool_names)
        if state == "call":
            return [call] if final else []
        if state == "maybe" and not final:
            return []
        segments: list[Segment] = []
        position = 0
        while True:
            start = text.find(OPEN_TAG, position)
            if start < 0:
                end = len(text) if final else partial_marker_at_end(text, OPEN_TAG)
                segments.append(text[position:end])
                return segments
            segments.append(text[position:start])
            body_start = start + len(OPEN_TAG)
            close = text.find(CLOSE_TAG, body_start)
            if close < 0:
                if final:
                    segments.append(self._block(text[body_start:], text[start:]))
                return segments
            position = close + len(CLOSE_TAG)
            segments.append(self._block(text[body_start:close], text[start:position]))

    def _block(self, body: str, whole: str) -> Segment:
        decoded = decode_json(body, 0)
        if decoded is None or skip_space(body, decoded[1]) != len(body):
            return whole
        call = as_call(decoded[0], self.tool_names, ARGUMENTS_KEYS)
        return whole if call is None else call
