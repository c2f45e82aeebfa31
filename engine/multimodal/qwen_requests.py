"""Qwen2.5-VL's side of request handling: images of any size, each taking the tokens
its patch grid gives, placed by the checkpoint's chat template from the message parts
as they are, and the M-RoPE positions of the prompt they make. Videos (Qwen2.5-VL's,
qwen_video.py) are media like images here, with a token of their own
(``video_token_id``) and a temporal patch count."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import InvalidRequestError
from engine.multimodal.images import ImageInput, ImageLimits
from engine.multimodal.mrope import MRopePositions, mrope_positions
from engine.multimodal.prompt import flatten_messages
from engine.multimodal.qwen_images import QwenImageProcessor
from engine.multimodal.qwen_video import QWEN_VIDEO_MODEL_TYPES, QwenVideoInput, QwenVideoProcessor
from engine.multimodal.requests import ImageRequests

QWEN_VL_MODEL_TYPES = ("qwen2_5_vl", "qwen3_vl")


class QwenImageRequests(ImageRequests):
    def __init__(
        self,
        model_dir: Path,
        hf_config,
        model,
        tokenizer,
        limits: ImageLimits | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ):
        """``min_pixels``/``max_pixels``: the resize bounds, when not the checkpoint's."""
        self.image_token_id: int = hf_config.image_token_id
        self.num_image_tokens = None  # each image's own: image_sizes
        self.placeholder: str = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.processor = QwenImageProcessor(model_dir, hf_config, limits, min_pixels, max_pixels)
        grid = self.processor.grid
        # [1, grid_h / m, grid_w / m, m * m, patch_dim]: all but the two block counts
        self.patch_dim = 3 * grid.temporal_patch_size * grid.patch_size**2
        self.videos: QwenVideoProcessor | None = None
        if getattr(hf_config, "model_type", None) in QWEN_VIDEO_MODEL_TYPES:
            self.videos = QwenVideoProcessor(model_dir, grid, self.limits)
            self.video_token_id: int = hf_config.video_token_id
            self.tokens_per_second: float = hf_config.vision_config.tokens_per_second

    def flatten(self, messages: list[dict]) -> tuple[list[dict], list[ImageInput]]:
        """The messages with their parts kept (the template joins them), each image part
        as ``{"type": "image"}``, and the images (decoded and preprocessed) in order."""
        return flatten_messages(
            messages,
            self.processor.load,
            self.placeholder,
            self.limits.max_images,
            keep_parts=True,
            load_video=self.videos and self.videos.load,
            max_videos=self.limits.max_videos,
        )

    def _token_of(self, media: ImageInput) -> int:
        return self.video_token_id if isinstance(media, QwenVideoInput) else self.image_token_id

    def _media_tokens(self) -> tuple[int, ...]:
        if self.videos is None:
            return (self.image_token_id,)
        return (self.image_token_id, self.video_token_id)

    def image_sizes(self, images: list[ImageInput]) -> list[int]:
        return [self.processor.grid.num_tokens(image.pixel_values) for image in images]

    def expand(self, token_ids: list[int], images: list[ImageInput]) -> list[int]:
        """Image (or video) token ``i`` repeated as many times as image ``i`` has tokens."""
        media_tokens = self._media_tokens()
        placeholders = [token_id for token_id in token_ids if token_id in media_tokens]
        if len(placeholders) != len(images):
            raise InvalidRequestError(
                f"the prompt has {len(placeholders)} image tokens for {len(images)} images"
            )
        if placeholders != [self._token_of(image) for image in images]:
            raise InvalidRequestError(
                "the prompt's image and video tokens are not in the order of its media"
            )
        sizes = iter(self.image_sizes(images))
        expanded: list[int] = []
        for token_id in token_ids:
            expanded += [token_id] * next(sizes) if token_id in media_tokens else [token_id]
        return expanded

    def check(self, images: list[ImageInput]) -> None:
        videos = [image for image in images if isinstance(image, QwenVideoInput)]
        if len(images) - len(videos) > self.limits.max_images:
            raise InvalidRequestError(f"a prompt may hold at most {self.limits.max_images} images")
        if videos and self.videos is None:
            raise InvalidRequestError("this model does not accept videos")
        merge = self.processor.grid.merge_size
        for image in images:
            shape = tuple(image.pixel_values.shape) if isinstance(image, ImageInput) else ()
            # A video's first dimension is its temporal patch count, an image's 1.
            frames = shape[0] if shape and isinstance(image, QwenVideoInput) else 1
            if len(shape) != 5 or (shape[0], *shape[3:]) != (frames, merge * merge, self.patch_dim):
                raise InvalidRequestError(
                    f"images must be ImageInputs of shape [1, h, w, {merge * merge}, "
                    f"{self.patch_dim}] (from chat_request or QwenImageProcessor.load)"
                )

    def positions(self, token_ids: list[int], images: list[ImageInput]) -> list[int]:
        """The image tokens' positions (expanded); raises when they do not match
        ``images``, or an image's tokens are not one run (its grid would not fit them)."""
        media_tokens = self._media_tokens()
        positions = [p for p, token_id in enumerate(token_ids) if token_id in media_tokens]
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
        grids, intervals = [], []
        for image in images:
            shape = tuple(image.pixel_values.shape)
            is_video = isinstance(image, QwenVideoInput)
            grids.append(shape[0:3] if is_video else shape[1:3])
            intervals.append(self._time_interval(image) if is_video else 1.0)
        return mrope_positions(len(token_ids), starts, grids, intervals)

    def _time_interval(self, video: QwenVideoInput) -> float:
        """Temporal positions between a video's temporal patches: a float32 product, as
        transformers multiplies its ``second_per_grid_ts`` tensor."""
        return float(np.float32(self.tokens_per_second) * np.float32(video.seconds_per_grid))
