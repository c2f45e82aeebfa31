"""What every tool-call parser shares: the pieces a model's text splits into, and the
JSON checks that decide whether a piece is a call.

A parser turns the text generated so far into *segments*: runs of content (``str``) and
well-formed calls (``Call``), in order. Given the whole text (``final``) the segments
cover all of it; given a prefix they cover only what no later text can change, and hold
back the rest (markup that has begun but not ended, or a tail that might begin it). So
the segments of a prefix are always a prefix of the whole text's segments, which is what
lets a stream send content and calls as soon as they are settled and still end with
exactly what the whole text parses to.
"""

from __future__ import annotations

import json
import secrets
import string
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

_ID_ALPHABET = string.ascii_letters + string.digits
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Call:
    """One function call: its name and its arguments as a JSON object's text."""

    name: str
    arguments: str


Segment = str | Call


class ToolParser(ABC):
    """Splits a model's answer into content and the calls of declared tools. A call that
    is malformed, or names a function not in ``tool_names``, stays content."""

    # The name used by --tool-call-parser (vLLM's name for the same format).
    name = ""
    # The whole answer is the arguments of a call of the one tool (a named tool_choice),
    # which a stream sends as they come.
    arguments_only = False

    def __init__(self, tool_names: frozenset[str]):
        self.tool_names = tool_names

    @abstractmethod
    def split(self, text: str, final: bool) -> list[Segment]:
        """The settled segments of ``text``; all of them when ``final``."""

    def new_call_id(self) -> str:
        return "call_" + random_id(24)


def random_id(length: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def decode_json(text: str, start: int) -> tuple[Any, int] | None:
    """The JSON value at ``text[start:]`` (after whitespace) and where it ends; None if
    there is none there, it has not ended yet, or it nests deeper than Python's parser
    recurses (a model may write thousands of brackets)."""
    start = skip_space(text, start)
    try:
        return _DECODER.raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError):
        return None


def skip_space(text: str, start: int) -> int:
    while start < len(text) and text[start].isspace():
        start += 1
    return start


def as_call(value: Any, tool_names: frozenset[str], arguments_keys: tuple[str, ...]) -> Call | None:
    """``{"name": <declared tool>, <an arguments key>: {...}}`` as a Call, else None.
    Some models write the arguments as a JSON string holding the object; that is taken
    too. A call without arguments has ``{}``."""
    if not isinstance(value, dict) or value.get("name") not in tool_names:
        return None
    keys = [key for key in arguments_keys if key in value]
    arguments = value[keys[0]] if keys else {}
    if isinstance(arguments, str):
        decoded = decode_json(arguments, 0)
        if decoded is None or skip_space(arguments, decoded[1]) != len(arguments):
            return None
        arguments = decoded[0]
    if not isinstance(arguments, dict):
        return None
    return Call(value["name"], json.dumps(arguments, ensure_ascii=False))


def partial_marker_at_end(text: str, marker: str) -> int:
    """Where a proper prefix of ``marker`` ends ``text`` (that much of the text may be
    the marker's start); ``len(text)`` if none does."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return len(text) - length
    return len(text)


def leading_value(text: str, opener: str, first: str) -> tuple[str, Any]:
    """For calls that may be the whole answer, with no markup: ``("no", None)`` when the
    answer cannot be one JSON value opened by ``opener`` whose first item starts with
    ``first`` (it starts with other text, such as code in braces, or its value has ended
    and more text follows); ``("value", value)`` when it is one finished value so far;
    ``("maybe", None)`` while the value is still being written (or is malformed, which
    only the end of the text tells)."""
    start = skip_space(text, 0)
    if start == len(text):
        return "maybe", None
    if not text.startswith(opener, start):
        return "no", None
    inside = skip_space(text, start + len(opener))
    if inside < len(text) and not text.startswith(first, inside):
        return "no", None
    decoded = decode_json(text, start)
    if decoded is None:
        return "maybe", None
    value, end = decoded
    return ("value", value) if skip_space(text, end) == len(text) else ("no", None)


def as_calls(
    value: Any, tool_names: frozenset[str], arguments_keys: tuple[str, ...]
) -> list[Call] | None:
    """A non-empty JSON array of calls (see ``as_call``) as Calls, else None."""
    if not isinstance(value, list) or not value:
        return None
    calls = [as_call(item, tool_names, arguments_keys) for item in value]
    return None if None in calls else calls
