"""The bare JSON call: the whole answer is ``{"name": ..., "arguments": {...}}`` naming a
declared tool, with no markup around it. Qwen2.5-Coder checkpoints answer so more often
than with their template's ``<tool_call>`` tags (llama.cpp accepts this form for them)."""

from __future__ import annotations

from server.tools.parser import Call, Segment, ToolParser, as_call, leading_value

ARGUMENTS_KEYS = ("arguments", "parameters")


def whole_answer_call(text: str, tool_names: frozenset[str]) -> tuple[str, Call | None]:
    """``("call", call)`` when ``text`` is one call object so far, ``("maybe", None)``
    while it may still become one, ``("no", None)`` when it cannot."""
    state, value = leading_value(text, "{", '"')
    if state != "value":
        return state, None
    call = as_call(value, tool_names, ARGUMENTS_KEYS)
    return ("call", call) if call is not None else ("no", None)


class BareJsonParser(ToolParser):
    """The parser for templates with no markup we know: only a whole-answer call."""

    name = "json"

    def split(self, text: str, final: bool) -> list[Segment]:
        state, call = whole_answer_call(text, self.tool_names)
        if state == "no" or (final and state == "maybe"):
            return [text]
        # A call is settled only by the end of the answer: more text would make it prose.
        return [call] if final and call is not None else []
