"""OpenAI chat messages with image parts -> token ids with image spans.

Content given as a list of parts (``text`` and ``image_url``, in any order) is flattened
to a string, one image placeholder (the model's image token, e.g. ``<image>``) where each
image was and parts joined by newlines, so any chat template (even one that only takes
string content) keeps the images exactly where the user put them. After tokenization
each placeholder token is expanded to one position per image feature, as Hugging Face's
LLaVA processor does.

Models whose chat template places images itself (Qwen2.5-VL) keep the parts instead:
text parts as they are, each image as an ``{"type": "image"}`` part, for the template
to join as it was written to.

A ``video_url`` part becomes what the model's video loader says (video.py's
``LoadedVideo``): its inputs join the images, in prompt order, and its text or parts
stand where it was (VILA: one placeholder a frame; Qwen2.5-VL: a ``{"type": "video"}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engine.errors import InvalidRequestError
from engine.multimodal.images import ImageInput
from engine.multimodal.video import LoadedVideo
from engine.tokenizer import ChatTemplate


def flatten_messages(
    messages: list[dict],
    load_image: Callable[[str], ImageInput] | None,
    placeholder: str | None,
    max_images: int,
    keep_parts: bool = False,
    load_video: Callable[[str], LoadedVideo] | None = None,
    max_videos: int = 0,
) -> tuple[list[dict], list[ImageInput]]:
    """Messages with string content (with ``keep_parts``, content given as parts stays
    parts), and their images (and videos' inputs) in order. ``load_image`` is None for
    text-only models, which then refuse image parts; ``load_video`` None refuses videos."""
    if not isinstance(messages, list):
        raise InvalidRequestError("messages must be a list")
    flat: list[dict] = []
    images: list[ImageInput] = []
    num_images = num_videos = 0
    for message_index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError("each message must be an object")
        content = message.get("content")
        if not isinstance(content, list):
            flat.append(message)
            continue
        texts, parts = [], []
        for part_index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise InvalidRequestError("a text part needs a string 'text'")
                if placeholder is not None and placeholder in part["text"]:
                    raise InvalidRequestError(
                        f"message text must not contain the image placeholder {placeholder!r}"
                    )
                texts.append(part["text"])
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                if load_image is None:
                    raise InvalidRequestError("this model does not accept images")
                if num_images == max_images:
                    raise InvalidRequestError(f"a prompt may hold at most {max_images} images")
                num_images += 1
                with _where(message_index, part_index):
                    images.append(load_image(_url_of(part, kind)))
                texts.append(placeholder)
                parts.append({"type": "image"})
            elif kind == "video_url":
                if load_video is None:
                    raise InvalidRequestError("this model does not accept videos")
                if num_videos == max_videos:
                    raise InvalidRequestError(f"a prompt may hold at most {max_videos} videos")
                num_videos += 1
                with _where(message_index, part_index):
                    video = load_video(_url_of(part, kind))
                images += video.inputs
                texts.append(video.text)
                parts += video.parts
            else:
                raise InvalidRequestError(
                    f"unsupported content part type {kind!r}; use 'text', 'image_url' or "
                    "'video_url'"
                )
        flat.append({**message, "content": parts if keep_parts else "\n".join(texts)})
    return flat, images


def render_chat(
    template: ChatTemplate,
    messages: list[dict],
    flat: list[dict],
    tools: list[dict] | None = None,
    continue_final_message: bool = False,
) -> str:
    """Render ``flat`` (``messages`` through ``flatten_messages``). Templates differ:
    ChatML-like ones take string content only, while llava-hf's iterate over parts and
    render nothing of a string. So: strings first, then each flattened message as one
    text part; the first rendering that shows every flattened message's text wins.
    Messages whose parts ``flatten_messages`` kept are rendered as they are."""
    if any(isinstance(m.get("content"), list) for m in flat):
        return _render_parts(template, flat, tools, continue_final_message)
    flattened = [i for i, m in enumerate(messages) if isinstance(m.get("content"), list)]
    as_parts = [
        {**m, "content": [{"type": "text", "text": m["content"]}]} if i in flattened else m
        for i, m in enumerate(flat)
    ]
    error = InvalidRequestError("the chat template drops the text of messages given as parts")
    for candidate in (flat, as_parts) if flattened else (flat,):
        try:
            text = template.render(candidate, tools, continue_final_message)
        except InvalidRequestError as e:
            error = e
            continue
        if all(flat[i]["content"].strip() in text for i in flattened):
            return text
    raise error


def _render_parts(
    template: ChatTemplate,
    flat: list[dict],
    tools: list[dict] | None,
    continue_final_message: bool,
) -> str:
    text = template.render(flat, tools, continue_final_message)
    for message in flat:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part["type"] == "text" and part["text"].strip() not in text:
                raise InvalidRequestError(
                    "the chat template drops the text of messages given as parts"
                )
    return text


@contextmanager
def _where(message_index: int, part_index: int) -> Iterator[None]:
    """Which of several images or videos is at fault; the engine's messages say why."""
    try:
        yield
    except InvalidRequestError as e:
        where = f"messages[{message_index}].content[{part_index}]"
        raise InvalidRequestError(f"{where}: {e}") from None


def _url_of(part: dict, kind: str) -> str:
    media_url = part.get(kind)
    url = media_url.get("url") if isinstance(media_url, dict) else media_url
    if not isinstance(url, str):
        article = "an" if kind[0] in "aeiou" else "a"
        raise InvalidRequestError(f"{article} {kind} part needs {kind}.url (a string)")
    return url


def expand_image_tokens(
    token_ids: list[int], image_token_id: int, num_image_tokens: int
) -> list[int]:
    """Each image token repeated ``num_image_tokens`` times."""
    expanded: list[int] = []
    for token_id in token_ids:
        expanded += [token_id] * num_image_tokens if token_id == image_token_id else [token_id]
    return expanded


def image_positions(
    token_ids: list[int], image_token_id: int, num_images: int, num_image_tokens: int
) -> list[int]:
    """Positions of the image tokens; image ``i`` owns
    ``positions[i * num_image_tokens : (i + 1) * num_image_tokens]`` (in order, as in
    Hugging Face's LLaVA). Raises when they do not match the images given."""
    positions = [p for p, token_id in enumerate(token_ids) if token_id == image_token_id]
    if len(positions) != num_images * num_image_tokens:
        raise InvalidRequestError(
            f"the prompt has {len(positions)} image tokens but {num_images} images take "
            f"{num_images * num_image_tokens} ({num_image_tokens} each)"
        )
    return positions
