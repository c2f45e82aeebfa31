"""The FastAPI app: OpenAI-compatible endpoints over one AsyncLLM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from engine import AsyncLLM
from server.chat import create_chat_completion
from server.client_budget import ClientErrorBudget, ClientErrorBudgetMiddleware
from server.completions import create_completion
from server.context import ServerContext
from server.errors import install_error_handlers
from server.middleware import (
    PUBLIC_PATHS,
    APIKeyMiddleware,
    BodyLimitMiddleware,
    JSONOnlyMiddleware,
    RequestIdMiddleware,
)
from server.openapi import CHAT_COMPLETIONS, COMPLETIONS, MODEL, MODELS, mount_docs
from server.routes import health, list_models, metrics, retrieve_model
from server.settings import ServerSettings
from server.state import EngineHolder
from server.web import mount_web_ui


def create_app(
    settings: ServerSettings,
    load_engine: Callable[[], AsyncLLM],
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """An app that, once started, calls ``load_engine`` in a background thread and
    serves it; until it returns the app answers 503 (``on_load_failure`` hears if it
    raises). The engine is shut down with the app."""
    holder = EngineHolder(load_engine, settings.max_queued_requests)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder.start_loading(on_load_failure)
        yield
        holder.shutdown()

    # The endpoints take raw bodies (to answer OpenAI-style errors), so FastAPI's own
    # schema would describe none: server.openapi serves one that does.
    app = FastAPI(
        title="edgechat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.ctx = ServerContext(settings, holder)
    install_error_handlers(app)
    route = app.add_api_route
    route("/v1/chat/completions", create_chat_completion, methods=["POST"], **CHAT_COMPLETIONS)
    route("/v1/completions", create_completion, methods=["POST"], **COMPLETIONS)
    route("/v1/models", list_models, methods=["GET"], **MODELS)
    route("/v1/models/{model:path}", retrieve_model, methods=["GET"], **MODEL)
    route("/health", health, methods=["GET"])
    route("/metrics", metrics, methods=["GET"])
    if settings.docs:
        # The routes so far are the API (not the page's nor the docs' own files).
        mount_docs(app, list(app.routes), api_key=settings.api_key is not None)
    public_paths = PUBLIC_PATHS
    if settings.web_ui:
        public_paths |= mount_web_ui(app)
    # The last one added runs first: the key is checked before any body is read.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        timeout=settings.body_read_timeout_seconds,
    )
    app.add_middleware(JSONOnlyMiddleware)
    if settings.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key, public_paths=public_paths)
    if settings.max_client_errors_per_minute:
        # Outside the key check and the body read: an address out of budget costs neither;
        # wrong keys are charged too.
        budget = ClientErrorBudget(settings.max_client_errors_per_minute)
        app.add_middleware(ClientErrorBudgetMiddleware, budget=budget)
    # Outside the key check: a 401 carries the id too.
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origins:
        # Outermost: a browser's preflight carries no key and must be answered first.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-Id"],
        )
    return app
