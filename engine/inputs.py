"""Requests into Sequences: tokenizing, rendering chats, preprocessing images and
checking everything a request brings against the model, before the engine sees it.

Runs on any thread (a server tokenizes and fetches images off its event loop); the
tokenizer is shared with the engine's detokenizers, hence ``tokenizer_lock``.
"""

from __future__ import annotations

import threading

from transformers import PreTrainedTokenizerBase

from engine.errors import InvalidRequestError, PromptTooLongError
from engine.multimodal.images import ImageInput
from engine.multimodal.prompt import flatten_messages, render_chat
from engine.multimodal.requests import ImageRequests
from engine.sampling import SamplingParams
from engine.sequence import Sequence
from engine.tokenizer import ChatTemplate


class InputProcessor:
    def __init__(
        self,
        model_name: str,
        tokenizer: PreTrainedTokenizerBase,
        chat_template: ChatTemplate,
        vision: ImageRequests | None,
        vocab_size: int,
        max_model_len: int,
        block_size: int,
    ):
        self.model_name = model_name
        self.tokenizer = tokenizer
        # Fast tokenizers are not safe to call from several threads at once.
        self.tokenizer_lock = threading.Lock()
        self.chat_template = chat_template
        self.vision = vision  # set for VLMs only: their image token, preprocessing, checks
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.block_size = block_size

    def make_sequence(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        images: list[ImageInput] | None = None,
    ) -> Sequence:
        """Validate and tokenize a request. Raises InvalidRequestError (a ValueError).

        With ``images`` (from ``chat_request``), token-id prompts carry each image's
        tokens already expanded; in a string prompt each image token is expanded here."""
        images = list(images or [])
        if images and self.vision is None:
            raise InvalidRequestError(f"model {self.model_name!r} does not accept images")
        if self.vision is not None:
            self.vision.check(images)
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt is empty")
            with self.tokenizer_lock:
                token_ids = self.tokenizer(prompt).input_ids
            if images:
                token_ids = self.vision.expand(token_ids)
        else:
            token_ids = list(prompt)
            if not token_ids:
                raise InvalidRequestError("the prompt is empty")
            bad = [t for t in token_ids if not isinstance(t, int) or not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"prompt token ids must be in [0, {self.vocab_size}); got {bad[:5]}"
                )
        if len(token_ids) >= self.max_model_len:
            raise PromptTooLongError(len(token_ids), self.max_model_len)
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams")
        bad = [t for t in params.logit_bias if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"logit_bias token ids must be in [0, {self.vocab_size}); got {bad[:5]}"
            )
        if self.vision is None:
            return Sequence(request_id, token_ids, params, self.block_size)
        return Sequence(
            request_id,
            token_ids,
            params,
            self.block_size,
            images,
            self.vision.positions(token_ids, images),
            [image.content_hash for image in images],
        )

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of text-only ``messages`` rendered by the chat template, ready to
        generate. Messages with images need ``chat_request``."""
        token_ids, images = self.chat_request(messages)
        if images:
            raise InvalidRequestError("messages with images need chat_request, not chat_prompt")
        return token_ids

    def chat_request(self, messages: list[dict]) -> tuple[list[int], list[ImageInput]]:
        """OpenAI-style ``messages`` (content a string, or ``text`` and ``image_url``
        parts in any order) -> the prompt's token ids, each image's tokens expanded, and
        its images in order: pass both to ``make_sequence``/``add_request``. Fetches, decodes
        and preprocesses the images (blocking: callers may run it off the event loop)."""
        if self.vision is None:
            flat, images = flatten_messages(messages, None, None, 0)
        else:
            flat, images = self.vision.flatten(messages)
        with self.tokenizer_lock:
            text = render_chat(self.chat_template, messages, flat)
            # The template writes any BOS itself, so the tokenizer must not add another.
            token_ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if images:
            token_ids = self.vision.expand(token_ids)
        return token_ids, images
