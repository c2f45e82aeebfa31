"""``POST /v1/completions`` (the legacy text completions API)."""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from engine import EngineError, RequestOutput
from server.context import ServerContext
from server.errors import engine_error, openai_endpoint
from server.logprobs import completion_logprobs
from server.params import sampling_params
from server.prompts import completion_prompts
from server.protocol import REFUSED_COMPLETION, CompletionRequest, parse_body
from server.serving import ResponseFormat, respond

# OpenAI's default for this endpoint (chat's is "whatever fits").
DEFAULT_MAX_TOKENS = 16


class CompletionFormat(ResponseFormat):
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Per streamed choice: the length of the token texts sent, for text_offset.
        self._offsets: dict[int, int] = {}

    def choice(self, index: int, output: RequestOutput) -> dict:
        logprobs = None if output.logprobs is None else completion_logprobs(output.logprobs, 0)
        return self._choice(index, output.text, logprobs, output.finish_reason)

    def delta_chunks(self, index: int, output: RequestOutput) -> list[dict]:
        if not output.new_text and not output.new_logprobs:
            return []
        logprobs = None
        if output.new_logprobs is not None:
            offset = self._offsets.get(index, 0)
            logprobs = completion_logprobs(output.new_logprobs, offset)
            self._offsets[index] = offset + sum(len(item.token) for item in output.new_logprobs)
        return [self.chunk([self._choice(index, output.new_text, logprobs, None)])]

    def finish_chunk(self, index: int, output: RequestOutput) -> dict:
        return self.chunk([self._choice(index, "", None, output.finish_reason)])

    @staticmethod
    def _choice(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


@openai_endpoint("cmpl")
async def create_completion(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    body = parse_body(await request.body(), CompletionRequest, REFUSED_COMPLETION)
    llm = ctx.holder.llm
    model = ctx.check_model(body.model)
    params = sampling_params(body, body.max_tokens or DEFAULT_MAX_TOKENS, body.logprobs)
    raw_prompts = completion_prompts(body.prompt)
    with ctx.admitted(len(raw_prompts) * len(params)) as ticket:
        prompts = []
        for prompt in raw_prompts:
            try:
                prepared = await llm.prepare(prompt)
                await llm.check_params(prepared, params[0])
            except EngineError as e:
                raise engine_error(e, "prompt") from None
            prompts.append(prepared)
        generation = ctx.start(request, prompts, params, ticket)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    fmt = CompletionFormat(
        request.state.request_id, model, int(time.time()), ctx.fingerprint, include_usage
    )
    return await respond(request, generation, fmt, body.stream, ctx.settings)
