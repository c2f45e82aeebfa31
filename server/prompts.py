"""Request prompts into what the engine takes: chat messages for ``chat_request``, and
completion prompts as a list of strings or token-id lists."""

from __future__ import annotations

import json

from server.errors import bad_request
from server.protocol import AssistantToolCall, ChatMessage

IMAGE_PART_TYPES = ("image_url", "input_image", "video_url")
ROLES = ("system", "user", "assistant", "tool", "developer")


def chat_messages(messages: list[ChatMessage], accepts_images: bool) -> list[dict]:
    """OpenAI messages as dicts for the engine's ``prepare_chat``: ``{"role", "content"}``,
    content a string or a list of parts in the order given: ``text``, and ``image_url``
    (and ``video_url``) when the model accepts images (the engine decodes and checks
    those, and refuses videos where the model takes none); an assistant's
    ``tool_calls`` (arguments as objects, which is what chat templates write out) and a
    tool result's ``tool_call_id``. A ``developer`` message is a system message (OpenAI's
    newer name, which chat templates do not know). Refused here, with the message's
    place: other roles, part types we never serve, and a tool result that answers no
    earlier call."""
    rendered = []
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role not in ROLES:
            role = json.dumps(message.role, ensure_ascii=False)[:40]
            raise bad_request(
                f"{where}.role must be one of {', '.join(ROLES)}; got {role}", param="messages"
            )
        if message.tool_calls and message.role != "assistant":
            raise bad_request(f"{where}: only assistant messages have tool_calls", "messages")
        content = message.content
        if content is None and not message.tool_calls:
            raise bad_request(f"{where}.content must be given", param="messages")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _check_part(part, f"{where}.content[{j}]", accepts_images)
        role = "system" if message.role == "developer" else message.role
        entry: dict = {"role": role, "content": "" if content is None else content}
        if message.tool_calls:
            entry["tool_calls"] = [
                _tool_call(call, f"{where}.tool_calls[{j}]")
                for j, call in enumerate(message.tool_calls)
            ]
            call_ids.update(call.id for call in message.tool_calls)
        if message.role == "tool":
            if message.tool_call_id not in call_ids:
                raise bad_request(
                    f"{where}.tool_call_id must be the id of a call in an earlier assistant "
                    "message's tool_calls",
                    param="messages",
                )
            entry["tool_call_id"] = message.tool_call_id
            if message.name is not None:
                entry["name"] = message.name
        rendered.append(entry)
    return rendered


def _tool_call(call: AssistantToolCall, where: str) -> dict:
    try:
        arguments = json.loads(call.function.arguments)
    except (json.JSONDecodeError, RecursionError):
        arguments = None
    if not isinstance(arguments, dict):
        raise bad_request(
            f"{where}.function.arguments must be a JSON object's text", param="messages"
        )
    function = {"name": call.function.name, "arguments": arguments}
    return {"id": call.id, "type": "function", "function": function}


def _check_part(part: dict, where: str, accepts_images: bool) -> None:
    kind = part.get("type")
    if kind in IMAGE_PART_TYPES and not accepts_images:
        media = "videos" if kind == "video_url" else "images"
        raise bad_request(
            f"{where}: this model does not accept {media}",
            param="messages",
            code="images_not_supported",
        )
    if kind not in ("text", "image_url", "video_url"):
        kind = json.dumps(kind, ensure_ascii=False)[:40]
        raise bad_request(f"{where}: content parts of type {kind} are not supported", "messages")
    if kind == "text" and not isinstance(part.get("text"), str):
        raise bad_request(f"{where}.text must be a string", param="messages")


def completion_prompts(
    prompt: str | list[str] | list[int] | list[list[int]],
) -> list[str | list[int]]:
    """A completion's prompt field as a list of prompts: a string, a list of strings, a
    list of token ids, or a list of token-id lists (OpenAI's four shapes)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt must not be an empty list", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [prompt]
    for p in prompt:
        if isinstance(p, list) and not p:
            raise bad_request("prompt token-id lists must not be empty", param="prompt")
    return list(prompt)
