"""Request fields into the engine's SamplingParams, one per choice."""

from __future__ import annotations

import json

from engine import InvalidRequestError, SamplingParams
from engine.structured import StructuredOutputSpec
from server.errors import bad_request
from server.protocol import ResponseFormat, SamplingFields, StructuredOutputs


def sampling_params(
    body: SamplingFields, max_tokens: int, logprobs: int | None
) -> list[SamplingParams]:
    """``body.n`` SamplingParams. With a seed, choice i gets ``seed + i``: the choices
    differ, yet the whole response is reproducible. Values are checked by SamplingParams
    (InvalidRequestError, answered with a 400)."""
    common = dict(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=_logit_bias(body.logit_bias),
        stop=_stop(body.stop),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        structured=structured_spec(body),
    )
    seeds = [None if body.seed is None else body.seed + i for i in range(body.n)]
    return [SamplingParams(seed=seed, **common) for seed in seeds]


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    # JSON object keys are strings; OpenAI's are token ids written in decimal.
    try:
        return {int(token_id): value for token_id, value in (bias or {}).items()}
    except ValueError:
        raise bad_request("logit_bias keys must be token ids", param="logit_bias") from None


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def structured_spec(body: SamplingFields) -> StructuredOutputSpec | None:
    """The one constraint the request puts on its text: OpenAI's ``response_format``
    or one of vLLM's spellings. Two constraints are a 400 naming both. Each spec names
    its field (``source``), so the engine's refusal of it names the field too."""
    given: list[tuple[str, dict]] = []
    if body.response_format is not None and body.response_format.type != "text":
        given.append(("response_format", _response_format(body.response_format)))
    if body.structured_outputs is not None:
        given.append(("structured_outputs", _structured_outputs(body.structured_outputs)))
    vllm_fields = {
        "guided_json": ("json_schema", body.guided_json),
        "guided_regex": ("regex", body.guided_regex),
        "guided_choice": ("choice", body.guided_choice),
        "guided_grammar": ("grammar", body.guided_grammar),
    }
    for name, (kind, value) in vllm_fields.items():
        if value is not None:
            given.append((name, {kind: _schema_text(value) if kind == "json_schema" else value}))
    if not given:
        return None
    if len(given) > 1:
        names = " and ".join(name for name, _ in given)
        raise bad_request(f"a request takes one output constraint, got {names}", param=given[1][0])
    name, constraint = given[0]
    try:
        return StructuredOutputSpec(**constraint, source=name)
    except InvalidRequestError as e:
        raise bad_request(f"{name}: {e}", param=name) from None


def _response_format(response_format: ResponseFormat) -> dict:
    if response_format.type == "json_object":
        return {"json_object": True}
    if response_format.json_schema is None or response_format.json_schema.json_schema is None:
        raise bad_request(
            "response_format of type json_schema needs json_schema.schema",
            param="response_format",
        )
    return {"json_schema": json.dumps(response_format.json_schema.json_schema)}


def _structured_outputs(fields: StructuredOutputs) -> dict:
    constraint = {
        kind: value
        for kind, value in (
            ("json_schema", fields.json_schema),
            ("regex", fields.regex),
            ("choice", fields.choice),
            ("grammar", fields.grammar),
            ("json_object", fields.json_object or None),
        )
        if value is not None
    }
    if len(constraint) != 1:
        raise bad_request(
            "structured_outputs takes exactly one of json, regex, choice, grammar and "
            f"json_object, got {len(constraint)}",
            param="structured_outputs",
        )
    if "json_schema" in constraint:
        constraint["json_schema"] = _schema_text(constraint["json_schema"])
    return constraint


def _schema_text(schema: dict | str) -> str:
    """A JSON schema given as an object or as its text, as text (checked by the engine)."""
    return schema if isinstance(schema, str) else json.dumps(schema)
