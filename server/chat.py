"""``POST /v1/chat/completions``."""

from __future__ import annotations

import dataclasses
import time

from fastapi import Request
from fastapi.responses import Response

from engine import EngineError, PromptTooLongError, RequestOutput, SamplingParams
from server.context import ServerContext
from server.errors import bad_request, engine_error, openai_endpoint
from server.logprobs import chat_logprobs
from server.params import sampling_params
from server.prompts import chat_messages
from server.protocol import REFUSED_CHAT, ChatCompletionRequest, check_continuation, parse_body
from server.serving import ResponseFormat, respond
from server.tools.registry import choose_parser
from server.tools.request import ToolRequest, tool_request
from server.tools.stream import ToolCallStream, parse_answer


class ChatFormat(ResponseFormat):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def __init__(self, *args, tools: ToolRequest, **kwargs):
        super().__init__(*args, **kwargs)
        self.tools = tools
        # Per streamed choice, when the answer is parsed for tool calls.
        self._streams: dict[int, ToolCallStream] = {}

    def choice(self, index: int, output: RequestOutput) -> dict:
        message = {"role": "assistant", "content": output.text, "refusal": None}
        finish_reason = output.finish_reason
        if self.tools.new_parser is not None:
            answer = parse_answer(self.tools.new_parser(), output.text)
            message["content"] = answer.content
            if answer.calls:
                message["tool_calls"] = answer.calls
                finish_reason = self._finish_reason(output, len(answer.calls))
        return {
            "index": index,
            "message": message,
            "logprobs": None if output.logprobs is None else chat_logprobs(output.logprobs),
            "finish_reason": finish_reason,
        }

    def first_chunks(self, num_choices: int) -> list[dict]:
        return [
            self._delta(index, {"role": "assistant", "content": ""}) for index in range(num_choices)
        ]

    def delta_chunks(self, index: int, output: RequestOutput) -> list[dict]:
        logprobs = None if output.new_logprobs is None else chat_logprobs(output.new_logprobs)
        if self.tools.new_parser is None:
            content, calls = output.new_text, []
        else:
            stream = self._streams.get(index)
            if stream is None:
                stream = self._streams[index] = ToolCallStream(self.tools.new_parser())
            content, calls = stream.feed(output.new_text, output.finished)
        chunks = []
        if content or logprobs:
            chunks.append(self._delta(index, {"content": content} if content else {}, logprobs))
        chunks += [self._delta(index, {"tool_calls": delta}) for delta in calls]
        return chunks

    def finish_chunk(self, index: int, output: RequestOutput) -> dict:
        stream = self._streams.get(index)
        num_calls = 0 if stream is None else stream.num_calls
        return self._delta(index, {}, finish_reason=self._finish_reason(output, num_calls))

    def _finish_reason(self, output: RequestOutput, num_calls: int) -> str | None:
        if num_calls and output.finish_reason == "stop":
            return self.tools.calls_finish_reason
        return output.finish_reason

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
    check_continuation(body)
    tools = tool_request(body, choose_parser(ctx.settings.tool_call_parser, llm.chat_template))
    messages = chat_messages(body.messages, ctx.accepts_images)
    with ctx.admitted(body.n) as ticket:
        try:
            prompt = await llm.prepare_chat(
                messages, tools.definitions, body.continue_final_message
            )
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
        params = _constrained(sampling_params(body, max_tokens, logprobs), tools)
        try:
            await llm.check_params(prompt, params[0])
        except EngineError as e:
            raise engine_error(e, "messages") from None
        generation = ctx.start(request, [prompt], params, ticket)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    fmt = ChatFormat(
        request.state.request_id,
        model,
        int(time.time()),
        ctx.fingerprint,
        include_usage,
        tools=tools,
    )
    return await respond(request, generation, fmt, body.stream, ctx.settings)


def _constrained(params: list[SamplingParams], tools: ToolRequest) -> list[SamplingParams]:
    """The params with the tool choice's constraint, which no other may join."""
    if tools.structured is None:
        return params
    if params[0].structured is not None:
        raise bad_request(
            "tool_choice 'required' or a named function constrains the answer to a call, "
            "so it cannot be combined with response_format",
            param="tool_choice",
        )
    return [dataclasses.replace(p, structured=tools.structured) for p in params]
