"""``POST /v1/chat/completions``."""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from engine import EngineError, PromptTooLongError, RequestOutput
from server.context import ServerContext
from server.errors import bad_request, engine_error, openai_endpoint
from server.logprobs import chat_logprobs
from server.params import sampling_params
from server.prompts import chat_messages
from server.protocol import REFUSED_CHAT, ChatCompletionRequest, parse_body
from server.serving import ResponseFormat, respond


class ChatFormat(ResponseFormat):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def choice(self, index: int, output: RequestOutput) -> dict:
        return {
            "index": index,
            "message": {"role": "assistant", "content": output.text, "refusal": None},
            "logprobs": None if output.logprobs is None else chat_logprobs(output.logprobs),
            "finish_reason": output.finish_reason,
        }

    def first_chunks(self, num_choices: int) -> list[dict]:
        return [
            self._delta(index, {"role": "assistant", "content": ""}) for index in range(num_choices)
        ]

    def delta_chunk(self, index: int, output: RequestOutput) -> dict | None:
        if not output.new_text and not output.new_logprobs:
            return None
        logprobs = None if output.new_logprobs is None else chat_logprobs(output.new_logprobs)
        return self._delta(index, {"content": output.new_text}, logprobs)

    def finish_chunk(self, index: int, output: RequestOutput) -> dict:
        return self._delta(index, {}, finish_reason=output.finish_reason)

    def _delta(
        self,
        index: int,
        delta: dict,
        logprobs: dict | None = None,
        finish_reason: str | None = None,
    ) -> dict:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        return self.chunk([choice])


@openai_endpoint("chatcmpl")
async def create_chat_completion(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    body = parse_body(await request.body(), ChatCompletionRequest, REFUSED_CHAT)
    llm = ctx.holder.llm
    model = ctx.check_model(body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs to be true", param="top_logprobs")
    messages = chat_messages(body.messages, ctx.accepts_images)
    with ctx.admitted(body.n) as ticket:
        try:
            prompt = await llm.prepare_chat(messages)
        except PromptTooLongError as e:
            raise engine_error(e, "messages") from None
        except EngineError as e:  # an image or the chat template refused
            raise bad_request(str(e), param="messages") from None
        # NOTE: by default a chat answer may fill the context (OpenAI's behaviour).
        max_tokens = (
            body.max_completion_tokens
            or body.max_tokens
            or max(llm.max_model_len - prompt.num_tokens, 1)
        )
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = sampling_params(body, max_tokens, logprobs)
        try:
            llm.check_params(prompt, params[0])
        except EngineError as e:
            raise engine_error(e, "messages") from None
        generation = ctx.start(request, [prompt], params, ticket)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    fmt = ChatFormat(
        request.state.request_id, model, int(time.time()), ctx.fingerprint, include_usage
    )
    return await respond(request, generation, fmt, body.stream, ctx.settings)
