"""Structured outputs over HTTP with the openai client: response_format (json_schema,
json_object, text), the pydantic ``parse()`` helper, vLLM's extensions, streaming, n > 1,
an image, and a 400 naming the field for every constraint we cannot serve."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pydantic
import pytest

from tests.engine.vlm_fixtures import data_url, image_part, random_image, text_part
from tests.server.conftest import LiveServer

pytestmark = pytest.mark.timeout(120)

MESSAGES = [{"role": "user", "content": "Describe a city as JSON."}]
CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "population": {"type": "integer", "minimum": 0, "maximum": 99999},
        "districts": {"type": "array", "items": {"enum": ["old", "new"]}, "maxItems": 2},
    },
    "required": ["name", "population", "districts"],
    "additionalProperties": False,
}
CITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}


class Weather(pydantic.BaseModel):
    sky: Literal["clear", "cloudy", "rain"]
    degrees: int = pydantic.Field(ge=-40, le=50)
    windy: bool


def chat(server: LiveServer, **kwargs):
    kwargs.setdefault("messages", MESSAGES)
    kwargs.setdefault("max_tokens", 120)
    return server.openai().chat.completions.create(model=server.model, **kwargs)


def post(server: LiveServer, path: str, body: dict):
    with server.http() as http:
        return http.post(path, json={"model": server.model, **body})


def test_json_schema_streamed_and_not_with_two_choices(server: LiveServer) -> None:
    whole = chat(server, response_format=CITY_FORMAT, n=2, seed=7)
    streamed: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chat(server, response_format=CITY_FORMAT, n=2, seed=7, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    texts = [choice.message.content for choice in whole.choices]
    for text in texts:
        jsonschema.validate(json.loads(text), CITY)
    assert texts[0] != texts[1]  # a choice each, each with its own matcher and seed
    assert [streamed[0], streamed[1]] == texts
    assert [c.finish_reason for c in whole.choices] == ["stop", "stop"] == [finish[0], finish[1]]
    assert server.all_blocks_free()


def test_json_object_and_text(server: LiveServer) -> None:
    # A random model rarely closes a free string: "{" and "}" pushed up (over '{"', say)
    # make the object empty, and the grammar puts them in order and stops there.
    tokenizer = server.llm.engine.tokenizer
    bias = {str(tokenizer(c, add_special_tokens=False).input_ids[0]): 100 for c in "{}"}
    answer = chat(server, response_format={"type": "json_object"}, logit_bias=bias, seed=1)
    assert answer.choices[0].message.content == "{}"
    assert answer.choices[0].finish_reason == "stop"
    vllm_style = {"prompt": "x", "logit_bias": bias, "structured_outputs": {"json_object": True}}
    assert post(server, "/v1/completions", vllm_style).json()["choices"][0]["text"] == "{}"
    text = chat(
        server,
        response_format={"type": "text"},
        logit_bias=bias,
        max_tokens=4,
        extra_body={"ignore_eos": True},
    )
    # Unconstrained, the same bias writes braces in any order, as many as max_tokens.
    content = text.choices[0].message.content
    assert len(content) == 4 and set(content) <= {"{", "}"}


def test_parse_with_a_pydantic_model(server: LiveServer) -> None:
    completion = server.openai().chat.completions.parse(
        model=server.model, messages=MESSAGES, response_format=Weather, max_tokens=60, seed=3
    )
    weather = completion.choices[0].message.parsed
    assert isinstance(weather, Weather)
    assert Weather.model_validate_json(completion.choices[0].message.content) == weather


def test_a_length_cut_says_length(server: LiveServer) -> None:
    answer = chat(server, response_format=CITY_FORMAT, max_tokens=4, seed=2)
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.content.startswith("{")


@pytest.mark.parametrize(
    ("extension", "check"),
    [
        ({"guided_json": CITY}, lambda t: jsonschema.validate(json.loads(t), CITY)),
        ({"guided_json": json.dumps(CITY)}, lambda t: jsonschema.validate(json.loads(t), CITY)),
        ({"guided_regex": "[a-c]{3}!"}, lambda t: len(t) == 4 and set(t[:3]) <= set("abc")),
        ({"guided_choice": ["left", "right"]}, lambda t: t in ("left", "right")),
        ({"guided_grammar": 'root ::= "up" | "down"'}, lambda t: t in ("up", "down")),
        ({"structured_outputs": {"choice": ["on", "off"]}}, lambda t: t in ("on", "off")),
        (
            {"structured_outputs": {"json": CITY}},
            lambda t: jsonschema.validate(json.loads(t), CITY),
        ),
    ],
)
def test_vllm_extensions_on_completions(server: LiveServer, extension: dict, check) -> None:
    response = post(
        server, "/v1/completions", {"prompt": "Answer:", "max_tokens": 120, "seed": 5, **extension}
    )
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    assert choice["finish_reason"] == "stop"
    assert check(choice["text"]) is not False


def test_response_format_on_completions(server: LiveServer) -> None:
    response = post(
        server,
        "/v1/completions",
        {"prompt": "City:", "max_tokens": 120, "seed": 4, "response_format": CITY_FORMAT},
    )
    jsonschema.validate(json.loads(response.json()["choices"][0]["text"]), CITY)


def test_an_image_with_a_schema(vlm_server: LiveServer) -> None:
    messages = [
        {"role": "user", "content": [image_part(data_url(random_image(1))), text_part("JSON?")]}
    ]
    answer = chat(vlm_server, messages=messages, response_format=CITY_FORMAT, seed=1)
    jsonschema.validate(json.loads(answer.choices[0].message.content), CITY)


def json_schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}


@pytest.mark.parametrize(
    ("body", "param", "match"),
    [
        ({"response_format": json_schema_format({"type": "objec"})}, "response_format", "objec"),
        (
            {
                "response_format": json_schema_format(
                    {"type": "array", "minItems": 2, "maxItems": 1}
                )
            },
            "response_format",
            "minItems",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema.schema"),
        ({"response_format": {"type": "yaml"}}, "response_format", "response_format.type"),
        ({"guided_regex": "(open"}, "guided_regex", "unclosed"),
        ({"guided_grammar": "start: nowhere"}, "guided_grammar", "nowhere"),
        ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
        ({"guided_choice": []}, "guided_choice", "at least one"),
        (
            {"structured_outputs": {"regex": "a", "choice": ["a"]}},
            "structured_outputs",
            "exactly one",
        ),
        ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs", "whitespace"),
        (
            {"response_format": {"type": "json_object"}, "guided_regex": "a"},
            "guided_regex",
            "response_format and guided_regex",
        ),
    ],
)
def test_constraints_we_cannot_serve_are_400s_naming_the_field(
    server: LiveServer, body: dict, param: str, match: str
) -> None:
    for path, prompt in (
        ("/v1/chat/completions", {"messages": MESSAGES}),
        ("/v1/completions", {"prompt": "x"}),
    ):
        response = post(server, path, {**prompt, **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and match in error["message"], error
