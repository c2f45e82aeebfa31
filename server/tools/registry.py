"""The one place that names the tool-call formats and picks one for a chat template."""

from __future__ import annotations

from server.tools.bare_json import BareJsonParser
from server.tools.hermes import HermesParser
from server.tools.llama import LlamaJsonParser
from server.tools.mistral import MistralParser
from server.tools.parser import ToolParser

PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser for parser in (HermesParser, LlamaJsonParser, MistralParser, BareJsonParser)
}
# Text a chat template holds when it writes (or teaches) a format; the first found wins.
TEMPLATE_MARKERS = (
    ("<tool_call>", HermesParser.name),
    ("[TOOL_CALLS]", MistralParser.name),
    ("<|python_tag|>", LlamaJsonParser.name),
    ("Environment: ipython", LlamaJsonParser.name),
)
# Templates that show no format we know: only a whole-answer call object is taken.
DEFAULT_PARSER = BareJsonParser.name


def parser_for_template(template: str | None) -> type[ToolParser]:
    for marker, name in TEMPLATE_MARKERS:
        if template is not None and marker in template:
            return PARSERS[name]
    return PARSERS[DEFAULT_PARSER]


def parser_named(name: str) -> type[ToolParser]:
    """The parser ``--tool-call-parser NAME`` asks for; ValueError for an unknown name."""
    if name not in PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; choose one of {', '.join(PARSERS)}")
    return PARSERS[name]


def choose_parser(flag: str | None, template: str | None) -> type[ToolParser]:
    """``--tool-call-parser``'s parser when given, else the one the template shows."""
    return parser_named(flag) if flag is not None else parser_for_template(template)
