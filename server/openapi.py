"""``/openapi.json`` and ``/docs``: the API described with its real bodies.

The endpoints read raw bodies (server.protocol.parse_body), so that every error is an
OpenAI error object and never FastAPI's 422; FastAPI therefore sees no body to describe.
Each route's request body is given here from the request models server.protocol
validates with, and its responses from the models below. These response models are
documentation only: the endpoints build their JSON as dicts (server.serving, server.chat,
server.completions, server.routes) and never go through them; tests/server/test_openapi.py
holds real responses to them. ``/docs`` is Swagger UI, served from the copy vendored in
client/web/vendor/ (no CDN).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute

from server.protocol import ChatCompletionRequest, CompletionRequest

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
SWAGGER_FILES = {
    f"{DOCS_URL}/swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    f"{DOCS_URL}/swagger-ui.css": "text/css; charset=utf-8",
}
COMPONENTS = "#/components/schemas/{model}"


class Shape(BaseModel):
    # Exact: a field the server sends but this does not list fails the tests.
    model_config = ConfigDict(extra="forbid")


class ErrorObject(Shape):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None


class ErrorResponse(Shape):
    """Every error, whatever its status; also sent as an event of a stream that fails
    after it started."""

    error: ErrorObject


class PromptTokensDetails(Shape):
    cached_tokens: int


class Usage(Shape):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TopLogprob(Shape):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Shape):
    content: list[TokenLogprob]
    refusal: None


class ToolCallFunction(Shape):
    name: str
    arguments: str = Field(description="the arguments, a JSON object's text")


class ToolCall(Shape):
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class AssistantMessage(Shape):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: list[ToolCall] | None = Field(None, description="only when the model called")


FinishReason = Literal["stop", "length", "tool_calls", "abort", "error"]


class ChatChoice(Shape):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class Head(Shape):
    id: str
    created: int
    model: str
    system_fingerprint: str


class ChatCompletion(Head):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage


class FunctionDelta(Shape):
    name: str | None = None
    arguments: str


class ToolCallDelta(Shape):
    """A call's ``id``, ``type`` and ``function.name`` come first (with empty arguments),
    then pieces of ``function.arguments``."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class ChatDelta(Shape):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(Shape):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


STREAM_USAGE = (
    'with stream_options {"include_usage": true}: null in every chunk but a last one '
    "(with no choices) that holds the usage; absent otherwise"
)


class ChatCompletionChunk(Head):
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, description=STREAM_USAGE)


class CompletionLogprobs(Shape):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(Shape):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None = Field(description="null in a stream's text chunks")


class Completion(Head):
    """The body, and each chunk of a stream (``usage`` as in a chat chunk)."""

    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage | None = Field(None, description=STREAM_USAGE)


class ModelCard(Shape):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str = Field(description="the checkpoint path or Hub ID")
    max_model_len: int
    accepts_images: bool
    accepts_videos: bool
    demo: bool = Field(description="the built-in demo model: random weights")


class ModelList(Shape):
    object: Literal["list"]
    data: list[ModelCard]


REQUESTS: list[type[BaseModel]] = [ChatCompletionRequest, CompletionRequest]
RESPONSES: list[type[BaseModel]] = [
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ModelList,
    ModelCard,
    ErrorResponse,
]


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": COMPONENTS.format(model=model.__name__)}


def _json(model: type[BaseModel]) -> dict:
    return {"application/json": {"schema": _ref(model)}}


ERRORS = {
    400: "a bad request: the field is named in error.param",
    401: "no or a wrong API key (with --api-key)",
    404: "no such model",
    408: "the body did not arrive in time",
    413: "the body is too large",
    415: "the body is not sent as application/json",
    503: "the model is loading, the queue is full or the server is shutting down",
}


def _errors(*statuses: int) -> dict[int | str, Any]:
    return {
        status: {"description": ERRORS[status], "content": _json(ErrorResponse)}
        for status in statuses
    }


def _generation(request: type[BaseModel], body: type[BaseModel], chunk: type[BaseModel]) -> dict:
    """``add_api_route`` arguments of a generating endpoint."""
    return {
        "openapi_extra": {"requestBody": {"required": True, "content": _json(request)}},
        "responses": {
            200: {
                "description": "the answer; with stream true, server-sent events each "
                f"holding a {chunk.__name__} (or an ErrorResponse), then 'data: [DONE]'",
                "content": {
                    **_json(body),
                    "text/event-stream": {"schema": _ref(chunk)},
                },
            },
            **_errors(400, 401, 404, 408, 413, 415, 503),
        },
    }


CHAT_COMPLETIONS = _generation(ChatCompletionRequest, ChatCompletion, ChatCompletionChunk)
COMPLETIONS = _generation(CompletionRequest, Completion, Completion)
MODELS = {
    "responses": {
        200: {"description": "the served model", "content": _json(ModelList)},
        **_errors(401),
    }
}
MODEL = {
    "openapi_extra": {
        "parameters": [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
        ]
    },
    "responses": {
        200: {"description": "the served model", "content": _json(ModelCard)},
        **_errors(401, 404),
    },
}


def openapi_schema(app: FastAPI, routes: list[BaseRoute], api_key: bool) -> dict:
    """The OpenAPI document of ``routes``, with the request and response models as its
    components (and the bearer key as its security, with ``api_key``)."""
    schema = get_openapi(title=app.title, version=app.version, routes=routes)
    modes = [(model, "validation") for model in REQUESTS]
    modes += [(model, "serialization") for model in RESPONSES]
    _, definitions = models_json_schema(modes, ref_template=COMPONENTS)
    components = schema.setdefault("components", {})
    components["schemas"] = {**components.get("schemas", {}), **definitions["$defs"]}
    if api_key:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return schema


def mount_docs(app: FastAPI, routes: list[BaseRoute], api_key: bool) -> None:
    """Serve ``/openapi.json`` (describing ``routes``) and ``/docs``. The document is
    built at its first request, once every route exists."""
    built: list[dict] = []

    async def openapi(request: Request) -> Response:
        if not built:
            built.append(openapi_schema(app, routes, api_key))
        return JSONResponse(built[0])

    vendor = files("client.web") / "vendor"
    assets = {path: (vendor / path.rpartition("/")[2]).read_bytes() for path in SWAGGER_FILES}

    async def asset(request: Request) -> Response:
        path = request.url.path
        return Response(assets[path], media_type=SWAGGER_FILES[path])

    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_URL}/swagger-ui.css",
            # FastAPI's default icon and Swagger's validator badge are fetched from
            # the internet; the page must need nothing outside the server.
            swagger_favicon_url="data:,",
            swagger_ui_parameters={"validatorUrl": None},
        )

    app.add_api_route(OPENAPI_URL, openapi, methods=["GET"], include_in_schema=False)
    app.add_api_route(DOCS_URL, docs, methods=["GET"], include_in_schema=False)
    for path in SWAGGER_FILES:
        app.add_api_route(path, asset, methods=["GET"], include_in_schema=False)
