"""Qwen2.5-VL's side of request handling: images of any size, each taking the tokens
its patch grid gives, placed by the checkpoint's chat template from the message parts
as they are, and the M-RoPE positions of the prompt they make."""

from __future__ import annotations

from pathlib import Path

from engine.errors import InvalidRequestError
from engine.multimodal.images import ImageInput, ImageLimits
from engine.multimodal.mrope import MRopePositions, mrope_positions
from engine.multimodal.prompt import flatten_messages
from engine.multimodal.qwen_images import QwenImageProcessor
from engine.multimodal.requests import ImageRequests

QWEN_VL_MODEL_TYPES = ("qwen2_5_vl", "qwen3_vl")


class QwenImageRequests(ImageRequests):
    def __init__(
        self, model_dir: Path, hf_config, model, tokenizer, limits: ImageLimits | None = None
    ):
        self.image_token_id: int = hf_config.image_token_id
        self.num_image_tokens = None  # each image's own: image_sizes
        self.placeholder: str = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.processor = QwenImageProcessor(model_dir, hf_config, limits)
        grid = self.processor.grid
        # [1, grid_h / m, grid_w / m, m * m, patch_dim]: all but the two block counts
        self.patch_dim = 3 * grid.temporal_patch_size * grid.patch_size**2

    def flatten(self, messages: list[dict]) -> tuple[list[dict], list[ImageInput]]:
        """The messages with their parts kept (the template joins them), each image part
        as ``{"type": "image"}``, and the images (decoded and preprocessed) in order."""
        return flatten_messages(
            messages, self.processor.load, self.placeholder, self.limits.max_images, keep_parts=True
        )

    def image_sizes(self, images: list[ImageInput]) -> list[int]:
        return [self.processor.grid.num_tokens(image.pixel_values) for image in images]

    def expand(self, token_ids: list[int], images: list[ImageInput]) -> list[int]:
        """Image token ``i`` repeated as many times as image ``i`` has tokens."""
        num_placeholders = token_ids.count(self.image_token_id)
        if num_placeholders != len(images):
            raise InvalidRequestError(
                f"the prompt has {num_placeholders} image tokens for {len(images)} images"
            )
        sizes = iter(self.image_sizes(images))
        expanded: list[int] = []
        for token_id in token_ids:
            expanded += [token_id] * next(sizes) if token_id == self.image_token_id else [token_id]
        return expanded

    def check(self, images: list[ImageInput]) -> None:
        if len(images) > self.limits.max_images:
            raise InvalidRequestError(f"a prompt may hold at most {self.limits.max_images} images")
        merge = self.processor.grid.merge_size
        for image in images:
            shape = tuple(image.pixel_values.shape) if isinstance(image, ImageInput) else ()
            if len(shape) != 5 or (shape[0], *shape[3:]) != (1, merge * merge, self.patch_dim):
                raise InvalidRequestError(
                    f"images must be ImageInputs of shape [1, h, w, {merge * merge}, "
                    f"{self.patch_dim}] (from chat_request or QwenImageProcessor.load)"
                )

    def positions(self, token_ids: list[int], images: list[ImageInput]) -> list[int]:
        """The image tokens' positions (expanded); raises when they do not match
        ``images``, or an image's tokens are not one run (its grid would not fit them)."""
        positions = [p for p, token_id in enumerate(token_ids) if token_id == self.image_token_id]
        sizes = self.image_sizes(images)
        if len(positions) != sum(sizes):
            raise InvalidRequestError(
                f"the prompt has {len(positions)} image tokens but its {len(images)} images "
                f"take {sum(sizes)} ({', '.join(map(str, sizes)) or 'none'})"
            )
        start = 0
        for size in sizes:
            if positions[start + size - 1] - positions[start] != size - 1:
                raise InvalidRequestError("an image's tokens must be consecutive in the prompt")
            start += size
        return positions

    def mrope(self, token_ids: list[int], images: list[ImageInput]) -> MRopePositions | None:
        """The prompt's M-RoPE positions (None without images: plain positions)."""
        if not images:
            return None
        positions = self.positions(token_ids, images)
        starts, first = [], 0
        for size in self.image_sizes(images):
            starts.append(positions[first])
            first += size
        grids = [tuple(image.pixel_values.shape[1:3]) for image in images]
        return mrope_positions(len(token_ids), starts, grids)
