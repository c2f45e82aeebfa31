"""One choice's answer through a ToolParser: whole (content and calls) or streamed (text
deltas in, OpenAI deltas out), the two always agreeing.

Content is the answer's text outside the calls; with calls, trailing whitespace is
dropped, and empty content is None. A stream sends content as it settles (whitespace at
its end waits for what follows), and each call once its markup has closed and parsed:
``{"index", "id", "type", "function": {"name", "arguments": ""}}``, then its arguments.
So a malformed call is never half-sent as a call: it arrives as content. The one
exception is a named ``tool_choice`` (``arguments_only``), whose whole answer is the
call's arguments: its id and name go first, then each piece of text as it comes.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.tools.parser import Call, Segment, ToolParser


@dataclass(frozen=True)
class ParsedAnswer:
    content: str | None
    calls: list[dict]


def _content(segments: list[Segment]) -> tuple[str, list[Call]]:
    content = "".join(segment for segment in segments if isinstance(segment, str))
    calls = [segment for segment in segments if isinstance(segment, Call)]
    return (content.rstrip() if calls else content), calls


def _call_object(parser: ToolParser, call: Call) -> dict:
    return {
        "id": parser.new_call_id(),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def parse_answer(parser: ToolParser, text: str) -> ParsedAnswer:
    content, calls = _content(parser.split(text, final=True))
    return ParsedAnswer(content or None, [_call_object(parser, call) for call in calls])


class ToolCallStream:
    """Feeds one choice's text deltas through ``parser``."""

    def __init__(self, parser: ToolParser):
        self.parser = parser
        self._text = ""
        self._num_content_chars = 0
        self._num_calls = 0

    @property
    def num_calls(self) -> int:
        """Calls sent so far."""
        return self._num_calls

    def feed(self, new_text: str, final: bool) -> tuple[str, list[list[dict]]]:
        """The content to send now, and the ``tool_calls`` list of each delta to send
        after it: a new call's id and name, then its arguments."""
        if self.parser.arguments_only:
            return "", self._arguments(new_text)
        self._text += new_text
        content, calls = _content(self.parser.split(self._text, final))
        if not final:
            content = content.rstrip()
        # NOTE: the parser's segments of a prefix are a prefix of the whole's, so what
        # was sent is a prefix of the content and the calls sent come first in calls.
        assert len(content) >= self._num_content_chars, "a stream took back its content"
        new_content = content[self._num_content_chars :]
        self._num_content_chars = len(content)
        deltas = []
        for call in calls[self._num_calls :]:
            index = self._num_calls
            head = _call_object(self.parser, Call(call.name, ""))
            deltas.append([{"index": index, **head}])
            deltas.append([{"index": index, "function": {"arguments": call.arguments}}])
            self._num_calls += 1
        return new_content, deltas

    def _arguments(self, new_text: str) -> list[list[dict]]:
        deltas = []
        if not self._num_calls:
            [name] = self.parser.tool_names
            deltas.append([{"index": 0, **_call_object(self.parser, Call(name, ""))}])
            self._num_calls = 1
        if new_text:
            deltas.append([{"index": 0, "function": {"arguments": new_text}}])
        return deltas
