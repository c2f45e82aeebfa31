"""Request prompts into what the engine takes: chat messages for ``chat_request``, and
completion prompts as a list of strings or token-id lists."""

from __future__ import annotations

import json

from server.errors import bad_request
from server.protocol import ChatMessage

IMAGE_PART_TYPES = ("image_url", "input_image")
# Roles that only make sense with function calling, which we refuse.
TOOL_ROLES = ("tool", "function")


def chat_messages(messages: list[ChatMessage], accepts_images: bool) -> list[dict]:
    """OpenAI messages as ``{"role", "content"}`` dicts for the engine's ``chat_request``,
    content a string or a list of parts in the order given: ``text``, and ``image_url``
    when the model accepts images (the engine decodes and checks those). Refused here,
    with the part's place: the roles and part types we never serve."""
    rendered = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role in TOOL_ROLES or message.tool_calls:
            raise bad_request(
                f"{where}: tool and function messages are not supported (no function calling)",
                param="messages",
                code="unsupported_parameter",
            )
        content = message.content
        if content is None:
            raise bad_request(f"{where}.content must be given", param="messages")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _check_part(part, f"{where}.content[{j}]", accepts_images)
        rendered.append({"role": message.role, "content": content})
    return rendered


def _check_part(part: dict, where: str, accepts_images: bool) -> None:
    kind = part.get("type")
    if kind in IMAGE_PART_TYPES and not accepts_images:
        raise bad_request(
            f"{where}: this model does not accept images",
            param="messages",
            code="images_not_supported",
        )
    if kind not in ("text", "image_url"):
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
