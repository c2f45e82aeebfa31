"""Structured outputs on a tiny random Llama (the demo tokenizer): every constrained
output parses and validates, whatever the seed; unconstrained neighbours are untouched."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from engine import LLM, InvalidRequestError, SamplingParams
from engine.structured import StructuredOutputError, StructuredOutputSpec
from engine.structured.compiler import GrammarCompiler
from engine.structured.masks import TokenMasks, unpack_on_device, unpack_on_host

PROMPT = "Answer in JSON:"

SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string", "maxLength": 6},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["street", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "age", "address"],
        "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"enum": ["red", "green", "blue"]},
                "minItems": 1,
                "maxItems": 4,
            },
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 9},
                "minItems": 2,
                "maxItems": 3,
            },
        },
        "required": ["tags", "scores"],
        "additionalProperties": False,
    },
    "const_and_optional": {
        "type": "object",
        "properties": {
            "kind": {"const": "event"},
            "level": {"enum": [1, 2, 3]},
            "note": {"type": "string", "maxLength": 8},
            "ok": {"type": "boolean"},
        },
        "required": ["kind", "level", "ok"],
        "additionalProperties": False,
    },
    "refs": {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": -99, "maximum": 99},
                    "y": {"type": "integer", "minimum": -99, "maximum": 99},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {
            "start": {"$ref": "#/$defs/point"},
            "end": {"$ref": "#/$defs/point"},
            "path": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 2},
        },
        "required": ["start", "end"],
        "additionalProperties": False,
    },
    "string_lengths": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 3, "maxLength": 3},
            "id": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2}$"},
        },
        "required": ["code", "id"],
        "additionalProperties": False,
    },
}


def json_spec(schema: dict) -> StructuredOutputSpec:
    return StructuredOutputSpec(json_schema=json.dumps(schema))


def constrained(spec: StructuredOutputSpec, **params) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 200, "temperature": 1.0, **params}, structured=spec)


@pytest.fixture(scope="module")
def llm(tiny_llama) -> LLM:
    return LLM(str(tiny_llama), kv_cache_memory=0.02)


def assert_engine_idle(llm: LLM) -> None:
    block_manager = llm.engine.core.block_manager
    assert block_manager.num_free_blocks == block_manager.num_blocks
    assert not llm.engine.core.requests


def test_fifty_sampled_outputs_all_parse_and_validate(llm):
    cases = [(name, seed) for name in SCHEMAS for seed in range(10)]
    params = [constrained(json_spec(SCHEMAS[name]), seed=seed) for name, seed in cases]
    outputs = llm.generate([PROMPT] * len(cases), params)
    eos = llm.engine.inputs.grammars.eos_token_id
    for (name, seed), output in zip(cases, outputs):
        assert output.finish_reason == "stop", (name, seed, output.text)
        assert output.token_ids[-1] == eos
        jsonschema.validate(json.loads(output.text), SCHEMAS[name])
    # Sampling really sampled: the seeds gave different answers.
    assert len({o.text for o in outputs}) > 40
    assert_engine_idle(llm)


def test_unconstrained_rows_are_untouched_by_constrained_neighbours(llm):
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    prompts = ["one two three", "four five", "six", "seven eight nine ten"]
    alone = [o.token_ids for o in llm.generate(prompts, greedy)]
    spec = json_spec(SCHEMAS["arrays"])
    constrained_alone = llm.generate(PROMPT, constrained(spec, temperature=0))[0].token_ids
    mixed = llm.generate(
        [prompts[0], PROMPT, prompts[1], prompts[2], PROMPT, prompts[3]],
        [greedy, constrained(spec, temperature=0), greedy, greedy, constrained(spec, seed=3)]
        + [greedy],
    )
    assert [mixed[i].token_ids for i in (0, 2, 3, 5)] == alone
    assert mixed[1].token_ids == constrained_alone
    jsonschema.validate(json.loads(mixed[4].text), SCHEMAS["arrays"])


def test_regex_and_choice(llm):
    regex = StructuredOutputSpec(regex=r"[A-Z]{3}-[0-9]{2,4}")
    choice = StructuredOutputSpec(choice=("yes", "no", "maybe later"))
    outputs = llm.generate(
        [PROMPT] * 10,
        [constrained(regex, seed=s) for s in range(5)]
        + [constrained(choice, seed=s) for s in range(5)],
    )
    for output in outputs[:5]:
        assert output.finish_reason == "stop"
        assert len(output.text) in (6, 7, 8) and output.text[:3].isupper()
        assert output.text[3] == "-" and output.text[4:].isdigit()
    assert {o.text for o in outputs[5:]} <= {"yes", "no", "maybe later"}


def test_grammars_in_lark_with_embedded_json_and_in_gbnf(llm):
    call_schema = SCHEMAS["const_and_optional"]
    # x-guidance: JSON in a Lark grammar is compact only when asked (json_schema specs are).
    compact = {**call_schema, "x-guidance": {"whitespace_flexible": False}}
    lark = f'start: "<tool_call>" %json {json.dumps(compact)} "</tool_call>"'
    gbnf = 'root ::= "go " direction\ndirection ::= "north" | "south"'
    outputs = llm.generate(
        [PROMPT] * 4,
        [constrained(StructuredOutputSpec(grammar=lark), seed=s) for s in range(2)]
        + [constrained(StructuredOutputSpec(grammar=gbnf), seed=s) for s in range(2)],
    )
    for output in outputs[:2]:
        assert output.text.startswith("<tool_call>") and output.text.endswith("</tool_call>")
        body = output.text[len("<tool_call>") : -len("</tool_call>")]
        jsonschema.validate(json.loads(body), call_schema)
    assert {o.text for o in outputs[2:]} <= {"go north", "go south"}


def test_a_grammar_holds_against_logit_bias_and_ignore_eos(llm):
    letter = llm.tokenizer("x", add_special_tokens=False).input_ids[0]
    spec = StructuredOutputSpec(regex="[0-9]{4}")
    output = llm.generate(
        PROMPT, constrained(spec, logit_bias={letter: 100}, ignore_eos=True, temperature=0)
    )[0]
    assert output.finish_reason == "stop" and len(output.text) == 4 and output.text.isdigit()


def test_max_tokens_cuts_a_constrained_answer_with_length(llm):
    spec = json_spec({"type": "object", "properties": {"text": {"type": "string"}}})
    output = llm.generate(PROMPT, constrained(spec, max_tokens=5, seed=0))[0]
    assert output.finish_reason == "length" and len(output.token_ids) == 5
    assert output.text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.text)
    assert_engine_idle(llm)


def test_preempted_constrained_sequences_keep_their_grammar_state(tiny_llama):
    # 8 blocks of 16 tokens cannot hold 6 sequences of 30-60 tokens at once.
    block_bytes = 2 * 2 * 2 * 16 * 16 * 4  # K+V, 2 layers, 2 kv heads, head_dim 16, fp32
    small = LLM(str(tiny_llama), kv_cache_memory=8 * block_bytes / 2**30)
    roomy = LLM(str(tiny_llama), kv_cache_memory=0.02)
    names = list(SCHEMAS)
    params = [constrained(json_spec(SCHEMAS[names[i % 5]]), seed=i) for i in range(6)]
    want = [o.token_ids for o in roomy.generate([PROMPT] * 6, params)]
    got = small.generate([PROMPT] * 6, params)
    assert small.engine.core.scheduler.num_preemptions > 0
    assert [o.token_ids for o in got] == want
    for i, output in enumerate(got):
        jsonschema.validate(json.loads(output.text), SCHEMAS[names[i % 5]])
    assert_engine_idle(small)


def test_each_choice_has_its_own_matcher_and_abort_frees_it(llm):
    engine = llm.engine
    spec = json_spec(SCHEMAS["nested"])
    prompt = engine.inputs.prepare(PROMPT)
    first = engine.make_sequence("a", prompt, constrained(spec, seed=1))
    second = engine.make_sequence("b", prompt, constrained(spec, seed=2))
    assert first.grammar is not None and first.grammar is not second.grammar
    engine.add_sequence(first)
    engine.add_sequence(second)
    for _ in range(3):
        engine.step()
    engine.abort("a")
    assert first.grammar is None and "a" not in engine.core.requests
    while engine.has_unfinished:
        outputs = engine.step()
    assert outputs[-1].request_id == "b" and second.grammar is None
    jsonschema.validate(json.loads(outputs[-1].text), SCHEMAS["nested"])
    assert_engine_idle(llm)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (StructuredOutputSpec(json_schema='{"type": "objec"}'), "objec"),
        (
            StructuredOutputSpec(json_schema='{"type": "array", "minItems": 3, "maxItems": 1}'),
            "minItems",
        ),
        (StructuredOutputSpec(json_schema='{"$ref": "#/$defs/missing"}'), "missing"),
        (StructuredOutputSpec(json_schema='{"type": "object"'), "not valid JSON"),
        (StructuredOutputSpec(json_schema="[1, 2]"), "is an object"),
        (StructuredOutputSpec(json_schema='{"type": "string", "format": "nope"}'), "nope"),
        (StructuredOutputSpec(json_schema='{"type": "array", "uniqueItems": true}'), "unique"),
        (StructuredOutputSpec(regex="(unclosed"), "unclosed"),
        (StructuredOutputSpec(grammar="start: undefined_rule"), "undefined_rule"),
        (StructuredOutputSpec(grammar='root ::= "a" missing'), "missing"),
    ],
)
def test_a_constraint_the_library_refuses_fails_before_generation(llm, spec, problem):
    with pytest.raises(StructuredOutputError, match=problem):
        llm.generate(PROMPT, constrained(spec))
    assert not llm.engine.has_unfinished


def test_spec_checks_and_names_its_source():
    with pytest.raises(InvalidRequestError, match="exactly one"):
        StructuredOutputSpec(regex="a", choice=("a",))
    with pytest.raises(InvalidRequestError, match="at least one"):
        StructuredOutputSpec(choice=())
    named = StructuredOutputSpec(regex="a", source="guided_regex")
    assert named == StructuredOutputSpec(regex="a") and named.kind == "regex"
    assert StructuredOutputSpec(json_object=True).kind == "json_object"


def test_compiled_grammars_are_cached_by_spec_within_a_bound(llm):
    compiler = GrammarCompiler(llm.tokenizer, 2048, llm.tokenizer.eos_token_id, cache_size=2)
    first = compiler.compile(StructuredOutputSpec(regex="a+"))
    assert compiler.compile(StructuredOutputSpec(regex="a+", source="other")) is first
    compiler.compile(StructuredOutputSpec(regex="b+"))
    compiler.compile(StructuredOutputSpec(regex="c+"))  # evicts a+, the least recent
    assert compiler.num_compiled == 3
    assert compiler.compile(StructuredOutputSpec(regex="a+")) is not first
    assert compiler.num_compiled == 4
    with pytest.raises(StructuredOutputError, match="^guided_regex: invalid regular"):
        compiler.compile(StructuredOutputSpec(regex="(", source="guided_regex"))


def test_token_masks_touch_only_their_rows():
    logits = torch.randn(3, 70)
    bitmask = torch.zeros(1, 3, dtype=torch.int32)
    allowed = [0, 31, 33, 69]
    for token in allowed:
        word = bitmask[0, token // 32].item() | (1 << (token % 32))
        bitmask[0, token // 32] = word - (1 << 32) if word >= 1 << 31 else word
    masked = TokenMasks([1], bitmask).apply(logits)
    assert torch.equal(masked[[0, 2]], logits[[0, 2]])
    assert torch.equal(masked[1, allowed], logits[1, allowed])
    others = [t for t in range(70) if t not in allowed]
    assert torch.isneginf(masked[1, others]).all()
    every_row = TokenMasks([0, 1, 2], bitmask.expand(3, 3).contiguous()).apply(logits)
    assert torch.isneginf(every_row[:, others]).all()


def test_the_host_and_device_unpacking_agree_bit_for_bit():
    words = torch.randint(-(2**31), 2**31 - 1, (3, 5), dtype=torch.int32)
    host = unpack_on_host(words, 150)
    assert torch.equal(host, unpack_on_device(words, 150))
    expected = [
        [bool(int(words[r, t // 32]) >> (t % 32) & 1) for t in range(150)] for r in range(3)
    ]
    assert host.tolist() == expected
