"""The OpenAI request bodies we accept, and the fields we refuse.

Unknown fields are ignored (OpenAI's own clients send fields of newer API versions);
fields we know but do not implement are refused with a 400 that names them, so that
nobody believes a feature works that does not. Token ids, stop strings and sampling
ranges are checked by the engine (SamplingParams); only JSON types are checked here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from server.errors import bad_request

MAX_N = 16
INT64 = 1 << 63


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


Stop = _shaped(
    lambda v: v is None or isinstance(v, str) or _strings(v), "a string or a list of strings"
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


class StreamOptions(Body):
    include_usage: bool = False


class SamplingFields(Body):
    """What chat and text completions share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = Field(1, ge=1, le=MAX_N)
    stop: Stop = None
    # NOTE: n > 1 seeds choice i with seed + i, which must stay within torch's range.
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions (vLLM's names).
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False


class ChatMessage(Body):
    role: str
    # Parts are checked by server.prompts, which knows which kinds it can serve.
    content: Content = None
    tool_calls: list[Any] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)


class CompletionRequest(SamplingFields):
    # Normalised by server.prompts.
    prompt: Prompt
    logprobs: int | None = Field(None, ge=0)


def _absent(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _is(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: _absent(value) or value in allowed


# field -> (is this value one we serve?, why not)
REFUSED_COMMON = {
    "tools": (_absent, "tools (function calling) are not supported"),
    "tool_choice": (_is("none"), "tool_choice is not supported (no tools)"),
    "functions": (_absent, "functions (function calling) are not supported"),
    "function_call": (_is("none"), "function_call is not supported (no functions)"),
    "response_format": (
        _is({"type": "text"}),
        "response_format other than {'type': 'text'} is not supported",
    ),
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
    "suffix": (_is(""), "suffix (insertion) is not supported"),
    "echo": (_is(False), "echo is not supported"),
}

BodyT = TypeVar("BodyT", bound=Body)


def parse_body(raw: bytes, model: type[BodyT], refused: dict) -> BodyT:
    """The request body as ``model``; a 400 naming the field for anything we refuse."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
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


def _validation_error(error: ValidationError) -> Exception:
    first = error.errors(include_url=False)[0]
    loc = first["loc"]
    where = ".".join(str(part) for part in loc)
    message = first["msg"].removeprefix("Value error, ")
    return bad_request(f"{where}: {message}", param=str(loc[0]) if loc else None)


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
