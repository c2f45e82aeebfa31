"""The OpenAI request bodies we accept, and the fields we refuse.

Unknown fields are ignored (OpenAI's own clients send fields of newer API versions);
fields we know but do not implement are refused with a 400 that names them, so that
nobody believes a feature works that does not. Token ids, stop strings and sampling
ranges are checked by the engine (SamplingParams); only JSON types are checked here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)

from engine import SamplingParams
from server.errors import bad_request

MAX_N = 16
INT64 = 1 << 63
# OpenAI's limit on stop strings; each one is checked against every new token's text.
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
# Real request bodies nest 6 deep (messages, parts, image_url); JSON's parser recurses.
MAX_JSON_DEPTH = 32
# A JSON escape of a UTF-16 surrogate (half of a pair, or a lone one).
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _shaped(check: Callable[[Any], bool], description: str) -> Any:
    """A field of several JSON shapes. Rather than a Union, whose errors name each
    member (``stop.str: ...``), it is one error: "must be <description>"."""

    def validate(value: Any) -> Any:
        if not check(value):
            raise ValueError(f"must be {description}")
        return value

    return Annotated[Any, AfterValidator(validate)]


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    )


def _stop_strings(value: Any) -> bool:
    stops = [value] if isinstance(value, str) else value
    return (
        _strings(stops)
        and len(stops) <= MAX_STOP_STRINGS
        and all(len(stop) <= MAX_STOP_CHARS for stop in stops)
    )


Stop = _shaped(
    lambda v: v is None or _stop_strings(v),
    f"a string or a list of at most {MAX_STOP_STRINGS} strings, each of at most "
    f"{MAX_STOP_CHARS} characters",
)
Content = _shaped(
    lambda v: (
        v is None
        or isinstance(v, str)
        or (isinstance(v, list) and all(isinstance(part, dict) for part in v))
    ),
    "a string or a list of content parts",
)
Prompt = _shaped(
    lambda v: (
        isinstance(v, str)
        or _strings(v)
        or _token_ids(v)
        or (isinstance(v, list) and all(_token_ids(item) for item in v))
    ),
    "a string, a list of strings, a list of token ids or a list of token-id lists",
)


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# NOTE: strict types, as OpenAI's API has them: "stream": "yes" or "max_tokens": 2.5 is a
# 400, not coerced (a float field still takes an integer, as JSON does not tell them apart).


class StreamOptions(Body):
    include_usage: StrictBool = False


# A JSON schema, as an object or as its JSON text (vLLM takes both).
JsonText = _shaped(lambda v: v is None or isinstance(v, (dict, str)), "an object or a string")


class JsonSchemaFormat(Body):
    # OpenAI's rule for the name (the openai client sends a pydantic model's).
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    # NOTE: an alias: a field named "schema" would shadow BaseModel.schema.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    # Decoding always holds the schema, strict or not.
    strict: StrictBool | None = None


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(Body):
    """vLLM's ``structured_outputs``: exactly one of these (checked by server.params)."""

    # Options of vLLM's we do not implement are refused, not ignored.
    model_config = ConfigDict(extra="forbid")

    # NOTE: an alias: a field named "json" would shadow BaseModel.json.
    json_schema: JsonText = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: StrictBool | None = None


class SamplingFields(Body):
    """What chat and text completions share."""

    model: str | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat = 1.0
    top_p: StrictFloat = 1.0
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    stop: Stop = None
    # NOTE: n > 1 seeds choice i with seed + i, which must stay within torch's range.
    seed: StrictInt | None = Field(None, ge=-INT64, lt=INT64)
    presence_penalty: StrictFloat = 0.0
    frequency_penalty: StrictFloat = 0.0
    logit_bias: dict[str, StrictFloat] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions (vLLM's names).
    top_k: StrictInt = 0
    min_p: StrictFloat = 0.0
    repetition_penalty: StrictFloat = 1.0
    ignore_eos: StrictBool = False
    # Structured outputs: OpenAI's response_format, or vLLM's spellings (server.params).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: JsonText = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


class CalledFunction(Body):
    name: str
    # A JSON object's text, as this server (and OpenAI) sends it; checked by server.prompts.
    arguments: str


class AssistantToolCall(Body):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(Body):
    # Checked by server.prompts, whose error names the role.
    role: str
    # Parts are checked by server.prompts, which knows which kinds it can serve.
    content: Content = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class FunctionDefinition(Body):
    # OpenAI's rule for function names.
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    # A JSON schema; that it describes an object is checked by server.tools.request.
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDefinition(Body):
    type: Literal["function"]
    function: FunctionDefinition


def _tool_choice(value: Any) -> bool:
    if value is None or value in ("none", "auto", "required"):
        return True
    function = value.get("function") if isinstance(value, dict) else None
    return (
        isinstance(value, dict)
        and value.get("type") == "function"
        and isinstance(function, dict)
        and isinstance(function.get("name"), str)
    )


ToolChoice = _shaped(
    _tool_choice,
    "'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=SamplingParams.MAX_LOGPROBS)
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice = None
    parallel_tool_calls: StrictBool = True
    # vLLM's: continue the last (assistant) message's text instead of opening a new one.
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False


class CompletionRequest(SamplingFields):
    # Normalised by server.prompts.
    prompt: Prompt
    logprobs: StrictInt | None = Field(None, ge=0, le=SamplingParams.MAX_LOGPROBS)


def _absent(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _is(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: _absent(value) or value in allowed


# field -> (is this value one we serve?, why not)
REFUSED_COMMON = {
    # The deprecated spelling of tools (chat's "tools" and "tool_choice" are served).
    "functions": (_absent, "functions are not supported; use tools"),
    "function_call": (_is("none"), "function_call is not supported; use tool_choice"),
}
REFUSED_CHAT = {
    **REFUSED_COMMON,
    "audio": (_absent, "audio output is not supported"),
    "modalities": (_is(["text"]), "only the 'text' modality is supported"),
    "prediction": (_absent, "predicted outputs are not supported"),
    "reasoning_effort": (_absent, "reasoning_effort is not supported"),
    "web_search_options": (_absent, "web search is not supported"),
}
REFUSED_COMPLETION = {
    **REFUSED_COMMON,
    "tools": (_absent, "tools are served by /v1/chat/completions only"),
    "tool_choice": (_is("none"), "tool_choice is served by /v1/chat/completions only"),
    "suffix": (_is(""), "suffix (insertion) is not supported"),
    "echo": (_is(False), "echo is not supported"),
}

BodyT = TypeVar("BodyT", bound=Body)


def parse_body(raw: bytes, model: type[BodyT], refused: dict) -> BodyT:
    """The request body as ``model``; a 400 naming the field for anything we refuse."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    for field, (served, why) in refused.items():
        if not served(data.get(field)):
            raise bad_request(why, param=field, code="unsupported_parameter")
    try:
        body = model.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None
    _check_common(body, data)
    return body


def parse_json(raw: bytes) -> Any:
    """Strict JSON in UTF-8: no NaN or Infinity (nor numbers too large for a float), no
    strings that are not Unicode (lone surrogates), at most MAX_JSON_DEPTH levels deep."""
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise _too_deep() from None
    # NOTE: walking every value in Python costs more than the parse (10 ms for 10,000
    # stop strings), so only bodies that could fail are walked: a lone surrogate can
    # only come from a \uD800-\uDFFF escape (strict UTF-8 has none), and a body with no
    # more brackets than the depth limit cannot nest deeper than it.
    may_hold_surrogates = SURROGATE_ESCAPE.search(text) is not None
    if may_hold_surrogates or text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        _check_values(data, may_hold_surrogates)
    return data


def _refuse_constant(name: str) -> Any:
    raise bad_request(f"the request body holds {name}, which JSON does not allow")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise bad_request(f"the number {text[:40]} in the request body is too large")
    return value


def _too_deep() -> Exception:
    return bad_request(f"the request body nests more than {MAX_JSON_DEPTH} levels deep")


def _check_values(data: Any, check_unicode: bool) -> None:
    """Depth (and, if asked, Unicode) of a parsed body, without recursion."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if check_unicode:
                _check_unicode(value)
        elif isinstance(value, (list, dict)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if check_unicode and isinstance(key, str):
                    _check_unicode(key)
                pending.append((item, depth + 1))


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(
            "the request body holds a string that is not valid Unicode (a lone surrogate)"
        ) from None


def _validation_error(error: ValidationError) -> Exception:
    first = error.errors(include_url=False)[0]
    loc = first["loc"]
    where = ".".join(str(part) for part in loc)
    message = first["msg"].removeprefix("Value error, ")
    return bad_request(f"{where}: {message}", param=str(loc[0]) if loc else None)


def check_continuation(body: ChatCompletionRequest) -> None:
    """The two ways a chat prompt may end: a generation prompt opening a new assistant
    message (the default), or the last message, an assistant's, left open to continue."""
    if not body.continue_final_message:
        if not body.add_generation_prompt:
            raise bad_request(
                "add_generation_prompt false is only supported with continue_final_message",
                param="add_generation_prompt",
                code="unsupported_parameter",
            )
        return
    if body.add_generation_prompt:
        raise bad_request(
            "continue_final_message needs add_generation_prompt false (the continued "
            "message is the answer; no new one opens)",
            param="add_generation_prompt",
        )
    if body.messages[-1].role != "assistant":
        raise bad_request(
            "continue_final_message needs the last message to be an assistant message",
            param="continue_final_message",
        )


def _check_common(body: SamplingFields, data: dict) -> None:
    best_of = data.get("best_of")
    if best_of is not None and best_of != body.n:
        raise bad_request(
            "best_of is not supported (other than best_of == n)",
            param="best_of",
            code="unsupported_parameter",
        )
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
