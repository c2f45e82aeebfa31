"""Llama 3.1/3.2 JSON calls: the rest of the answer is one call object, or several
separated by ``;``, each ``{"name": ..., "parameters": {...}}`` (``"arguments"`` is
taken too, and the ``"type": "function"`` some models add first), optionally after
``<|python_tag|>``:

    Let me look that up.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}

``<|python_tag|>`` is a special token, which the engine's text leaves out, so a call may
also start at a bare ``{"name": "<declared tool>"`` anywhere. Everything from where the
calls start to the end must parse, or it is text (and a later start is tried).
"""

from __future__ import annotations

import re

from server.tools.parser import (
    Call,
    Segment,
    ToolParser,
    as_call,
    decode_json,
    partial_marker_at_end,
    skip_space,
)

PYTHON_TAG = "<|python_tag|>"
ARGUMENTS_KEYS = ("parameters", "arguments")
# How a call object begins, whitespace removed; a stream holds back any text that may
# still become one of these.
CALL_HEADS = ('{"name":"', '{"type":"function","name":"')
_HEAD = re.compile(r'\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:\s*"')
_START = re.compile(r"<\|python_tag\|>|\{")


class LlamaJsonParser(ToolParser):
    name = "llama3_json"

    def __init__(self, tool_names: frozenset[str]):
        super().__init__(tool_names)
        # NOTE: no calls start before self._clear in any text that extends self._seen: a
        # start refused once is refused for good. A stream re-splits a growing text, and
        # without this would look at every brace of it again each time.
        self._seen = ""
        self._clear = 0

    def split(self, text: str, final: bool) -> list[Segment]:
        begin = self._clear if text.startswith(self._seen) else 0
        for match in _START.finditer(text, begin):
            start = match.start()
            if not final:
                if _may_start_calls(text[start:]):
                    self._seen, self._clear = text, start
                    return [text[:start]]
                continue
            if match.group() == PYTHON_TAG:
                calls = self._calls(text, match.end())
            else:
                calls = self._calls(text, start) if _HEAD.match(text, start) else None
            if calls is not None:
                return [text[:start], *calls]
        if final:
            return [text]
        self._seen, self._clear = text, partial_marker_at_end(text, PYTHON_TAG)
        return [text[: self._clear]]

    def _calls(self, text: str, position: int) -> list[Call] | None:
        """The calls from ``position`` to the end, if that is all calls."""
        calls = []
        while True:
            decoded = decode_json(text, position)
            if decoded is None:
                return None
            call = as_call(decoded[0], self.tool_names, ARGUMENTS_KEYS)
            if call is None:
                return None
            calls.append(call)
            position = skip_space(text, decoded[1])
            if position == len(text):
                return calls
            if text[position] != ";":
                return None
            position = skip_space(text, position + 1)
            if position == len(text):
                return calls


def _may_start_calls(rest: str) -> bool:
    if rest.startswith(PYTHON_TAG):
        return True
    # Enough to tell: the heads are short, and a diverging start diverges for good.
    compact = "".join(rest[:256].split())
    return any(compact.startswith(head) or head.startswith(compact) for head in CALL_HEADS)
