"""The small endpoints: ``/v1/models``, ``/health`` and ``/metrics``."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.context import ServerContext
from server.errors import openai_endpoint


def _model_card(ctx: ServerContext) -> dict:
    llm = ctx.holder.llm
    return {
        "id": ctx.model_name,
        "object": "model",
        "created": ctx.created,
        "owned_by": "edgechat",
        "root": llm.model_name,
        "max_model_len": llm.max_model_len,
        "accepts_images": ctx.accepts_images,
        "accepts_videos": ctx.accepts_videos,
        # The built-in demo: random weights, meaningless output.
        "demo": llm.is_demo,
    }


@openai_endpoint("req")
async def list_models(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    return JSONResponse({"object": "list", "data": [_model_card(ctx)]})


@openai_endpoint("req")
async def retrieve_model(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    ctx.check_model(request.path_params["model"])
    return JSONResponse(_model_card(ctx))


async def health(request: Request) -> Response:
    """200 once the model is loaded; 503 while it loads or if it failed to (why is in
    the server's log, not for anyone who can reach this public route)."""
    holder = request.app.state.ctx.holder
    body = {"status": holder.status}
    if holder.load_error is not None:
        body["error"] = "the model failed to load"
    return JSONResponse(body, status_code=200 if holder.status == "ready" else 503)


async def metrics(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
