"""Tool-call parsers on canned model outputs of each template family: the calls and
content they find, and that streaming the same text in any chunking gives exactly that."""

from __future__ import annotations

import json
import random

import pytest

from server.tools.forced import NamedCallParser, RequiredCallsParser
from server.tools.parser import ToolParser
from server.tools.registry import PARSERS, parser_for_template, parser_named
from server.tools.stream import ToolCallStream, parse_answer

TOOLS = frozenset({"get_weather", "get_time"})
WEATHER = {"city": "Paris", "unit": "celsius"}
TIME = {"zone": "Europe/Paris"}


def hermes_call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


# (parser, model output, expected content, expected [(name, arguments)])
CASES = {
    "hermes one call": (
        "hermes",
        hermes_call("get_weather", WEATHER),
        None,
        [("get_weather", WEATHER)],
    ),
    "hermes two calls": (
        "hermes",
        hermes_call("get_weather", WEATHER) + "\n" + hermes_call("get_time", TIME),
        None,
        [("get_weather", WEATHER), ("get_time", TIME)],
    ),
    "hermes text then call": (
        "hermes",
        "Let me check the weather.\n\n" + hermes_call("get_weather", WEATHER),
        "Let me check the weather.",
        [("get_weather", WEATHER)],
    ),
    "hermes unclosed last call": (
        "hermes",
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}\n',
        None,
        [("get_time", TIME)],
    ),
    "hermes arguments as a JSON string": (
        "hermes",
        '<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"Europe/Paris\\"}"}'
        "</tool_call>",
        None,
        [("get_time", TIME)],
    ),
    "hermes malformed JSON stays text": (
        "hermes",
        'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call> ok',
        'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call> ok',
        [],
    ),
    "hermes unknown function stays text": (
        "hermes",
        hermes_call("launch_rocket", {}),
        hermes_call("launch_rocket", {}),
        [],
    ),
    "hermes malformed block beside a good one": (
        "hermes",
        "<tool_call>{oops}</tool_call>\n" + hermes_call("get_time", TIME),
        "<tool_call>{oops}</tool_call>",
        [("get_time", TIME)],
    ),
    "hermes bare call (Qwen2.5-Coder)": (
        "hermes",
        '\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n',
        None,
        [("get_weather", WEATHER)],
    ),
    "hermes plain text": ("hermes", "Paris is sunny.  ", "Paris is sunny.  ", []),
    "hermes text with a tag prefix at the end": ("hermes", "a <tool_", "a <tool_", []),
    "llama one call with python_tag": (
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        None,
        [("get_weather", WEATHER)],
    ),
    "llama one call without python_tag": (
        "llama3_json",
        '{"type": "function", "name": "get_time", "parameters": {"zone": "Europe/Paris"}}',
        None,
        [("get_time", TIME)],
    ),
    "llama two calls": (
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
        '{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}',
        None,
        [("get_weather", WEATHER), ("get_time", TIME)],
    ),
    "llama text then call": (
        "llama3_json",
        'Checking {braces} first.\n<|python_tag|>{"name": "get_time", "parameters": '
        '{"zone": "Europe/Paris"}}',
        "Checking {braces} first.",
        [("get_time", TIME)],
    ),
    "llama call followed by prose stays text": (
        "llama3_json",
        '{"name": "get_time", "parameters": {"zone": "Europe/Paris"}} is what I would call.',
        '{"name": "get_time", "parameters": {"zone": "Europe/Paris"}} is what I would call.',
        [],
    ),
    "llama malformed": (
        "llama3_json",
        '<|python_tag|>{"name": "get_time", "parameters": {"zone": ',
        '<|python_tag|>{"name": "get_time", "parameters": {"zone": ',
        [],
    ),
    "mistral one call": (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
        None,
        [("get_weather", WEATHER)],
    ),
    "mistral two calls": (
        "mistral",
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
        '"celsius"}}, {"name": "get_time", "arguments": {"zone": "Europe/Paris"}}]',
        None,
        [("get_weather", WEATHER), ("get_time", TIME)],
    ),
    "mistral text then call": (
        "mistral",
        'One moment.[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}]',
        "One moment.",
        [("get_time", TIME)],
    ),
    "mistral v11 calls": (
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}'
        '[TOOL_CALLS]get_time[ARGS]{"zone": "Europe/Paris"}',
        None,
        [("get_weather", WEATHER), ("get_time", TIME)],
    ),
    "mistral bare array (marker left out as a special token)": (
        "mistral",
        ' [{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}]',
        None,
        [("get_time", TIME)],
    ),
    "mistral malformed": (
        "mistral",
        '[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "Europe/Paris"}',
        '[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "Europe/Paris"}',
        [],
    ),
    "mistral array of other things stays text": ("mistral", "[1, 2]", "[1, 2]", []),
    "json whole-answer call": (
        "json",
        '{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}',
        None,
        [("get_time", TIME)],
    ),
    "json object that is no call": (
        "json",
        '{"zone": "Europe/Paris"}',
        '{"zone": "Europe/Paris"}',
        [],
    ),
    "json call inside prose stays text": (
        "json",
        'Call {"name": "get_time", "arguments": {}}',
        'Call {"name": "get_time", "arguments": {}}',
        [],
    ),
    "json malformed": (
        "json",
        '{"name": "get_time", "arguments": {',
        '{"name": "get_time", "arguments": {',
        [],
    ),
    "required two calls": (
        "required",
        '[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
        '{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}]',
        None,
        [("get_weather", WEATHER), ("get_time", TIME)],
    ),
    "required cut short stays text": ("required", '[{"name": "get_w', '[{"name": "get_w', []),
    "named call": ("named", '{"zone": "Europe/Paris"}', None, [("get_time", TIME)]),
}


def make_parser(name: str) -> ToolParser:
    if name == "required":
        return RequiredCallsParser(TOOLS)
    if name == "named":
        return NamedCallParser(frozenset({"get_time"}))
    return parser_named(name)(TOOLS)


def streamed(parser: ToolParser, chunks: list[str]) -> tuple[str | None, list[dict]]:
    """What an OpenAI client reassembles from the stream's deltas."""
    stream = ToolCallStream(parser)
    content = ""
    calls: dict[int, dict] = {}
    for i, chunk in enumerate(chunks + [""]):
        new_content, deltas = stream.feed(chunk, final=i == len(chunks))
        content += new_content
        for delta in deltas:
            [item] = delta
            call = calls.setdefault(item["index"], {"function": {"name": "", "arguments": ""}})
            if "id" in item:
                assert not call.get("id"), "a call's id is sent once, first"
                assert item["type"] == "function" and item["function"]["arguments"] == ""
                call["id"] = item["id"]
                call["function"]["name"] = item["function"]["name"]
            else:
                assert call.get("id"), "arguments come after the call's id and name"
            call["function"]["arguments"] += item["function"]["arguments"]
    return content or None, [calls[i] for i in range(len(calls))]


def named_arguments(calls: list[dict]) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


@pytest.mark.parametrize("case", CASES)
def test_whole_answer(case: str) -> None:
    parser_name, text, content, calls = CASES[case]
    parsed = parse_answer(make_parser(parser_name), text)
    assert parsed.content == content
    assert named_arguments(parsed.calls) == calls
    for call in parsed.calls:
        assert call["type"] == "function"
        assert isinstance(call["function"]["arguments"], str)


@pytest.mark.parametrize("case", CASES)
def test_streamed_in_any_chunks_equals_whole(case: str) -> None:
    parser_name, text, content, calls = CASES[case]
    rng = random.Random(case)
    chunkings = [list(text), [text]]
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 6))))
        chunkings.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])
    for chunks in chunkings:
        assert "".join(chunks) == text
        got_content, got_calls = streamed(make_parser(parser_name), chunks)
        assert got_content == content, chunks
        assert named_arguments(got_calls) == calls, chunks


@pytest.mark.parametrize("parser_name", [*PARSERS, "required"])
def test_brackets_nested_past_the_recursion_limit_stay_text(parser_name: str) -> None:
    for text in ("[" * 100_000, "<tool_call>" + "[" * 100_000 + "</tool_call>"):
        assert parse_answer(make_parser(parser_name), text).content == text


@pytest.mark.parametrize("parser_name", ["hermes", "json", "mistral"])
def test_answer_in_braces_that_is_no_call_streams_at_once(parser_name: str) -> None:
    for text in ("{ int x = 1; } and more", "[ x ] and more"):
        stream = ToolCallStream(make_parser(parser_name))
        assert stream.feed(text, final=False) == (text, [])


def test_content_streams_before_a_call_ends() -> None:
    stream = ToolCallStream(parser_named("hermes")(TOOLS))
    assert stream.feed("Let me check. ", final=False) == ("Let me check.", [])
    assert stream.feed('<tool_call>{"name": "get_time", "argu', final=False) == ("", [])
    content, deltas = stream.feed('ments": {}}</tool_call>', final=False)
    assert content == "" and len(deltas) == 2 and stream.num_calls == 1


def test_call_ids() -> None:
    [call] = parse_answer(make_parser("hermes"), hermes_call("get_time", TIME)).calls
    assert call["id"].startswith("call_") and len(call["id"]) == 29
    [call] = parse_answer(make_parser("mistral"), CASES["mistral one call"][1]).calls
    assert len(call["id"]) == 9 and call["id"].isalnum()
    ids = {
        parse_answer(make_parser("json"), CASES["json whole-answer call"][1]).calls[0]["id"]
        for _ in range(20)
    }
    assert len(ids) == 20


@pytest.mark.parametrize(
    "template, parser",
    [
        ("{%- if tools %}<tools>{{ tools | tojson }}</tools> <tool_call>{% endif %}", "hermes"),
        ("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}", "mistral"),
        ('{{- "<|python_tag|>" + tool_call.name }}', "llama3_json"),
        ('{{- "Environment: ipython\\n" }}', "llama3_json"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "json"),
        (None, "json"),
    ],
)
def test_parser_chosen_from_the_template(template: str | None, parser: str) -> None:
    assert parser_for_template(template) is PARSERS[parser]


def test_unknown_parser_name() -> None:
    with pytest.raises(ValueError, match="unknown tool-call parser 'xml'"):
        parser_named("xml")


def test_llama_parser_rescans_a_text_that_does_not_extend_the_last() -> None:
    parser = parser_named("llama3_json")(TOOLS)
    assert parser.split("{x} {y} and more text", final=False) == ["{x} {y} and more text"]
    call = '{"name": "get_time", "parameters": {"zone": "Europe/Paris"}}'
    [content, found] = parser.split("{" + call[1:], final=True)
    assert content == "" and found.name == "get_time"


# Pieces of every format, to be shuffled into texts no model would write but a parser
# must still split the same way streamed or whole.
FRAGMENTS = [
    hermes_call("get_time", {"zone": "UTC"}),
    '[TOOL_CALLS][{"name": "get_time", "arguments": {}}]',
    "[TOOL_CALLS]get_time[ARGS]{}",
    "<tool_call>",
    "</tool_call>",
    "[TOOL_CALLS]",
    "<|python_tag|>",
    "[ARGS]",
    "get_time",
    '{"name": "get_time", "arguments": {"zone": "UTC"}}',
    '{"name": "get_time", "parameters": {}}',
    '[{"name": "get_time", "arguments": {}}]',
    '{"zone": "UTC"}',
    "{",
    "}",
    "[",
    "]",
    ";",
    '"',
    " ",
    "\n",
    "Some text",
    "<tool",
]


@pytest.mark.parametrize("parser_name", [*PARSERS, "required"])
def test_shuffled_fragments_stream_as_whole(parser_name: str) -> None:
    rng = random.Random(parser_name)
    for _ in range(300):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 8)))
        whole = parse_answer(make_parser(parser_name), text)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 8))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        content, calls = streamed(make_parser(parser_name), chunks)
        assert content == whole.content, text
        assert named_arguments(calls) == named_arguments(whole.calls), text


def test_named_arguments_stream_as_they_come() -> None:
    # Cut short by max_tokens: still the call, its arguments cut short (as OpenAI's).
    text = '{"zone": "Eur'
    [call] = parse_answer(make_parser("named"), text).calls
    assert call["function"] == {"name": "get_time", "arguments": text}
    stream = ToolCallStream(make_parser("named"))
    content, [head] = stream.feed("", final=False)
    assert content == "" and head[0]["id"].startswith("call_")
    assert head[0]["function"] == {"name": "get_time", "arguments": ""}
    fragments = []
    for piece in ['{"zo', 'ne": ', '"Eur']:
        content, [[delta]] = stream.feed(piece, final=False)
        assert content == "" and delta == {"index": 0, "function": {"arguments": piece}}
        fragments.append(piece)
    assert stream.feed("", final=True) == ("", [])
    assert "".join(fragments) == text
