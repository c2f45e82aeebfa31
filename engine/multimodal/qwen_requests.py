"""Qwen2.5-VL's side of request handling: images of any size, each taking the tokens
its patch grid gives, placed by the checkpoint's chat template from the message parts
as they are, and the M-RoPE positions of the prompt they make. Videos (qwen_video.py,
qwen3_video.py) are media like images here, with a token of their own
(``video_token_id``) and a temporal patch count; a Qwen3-VL video's tokens are one run
per temporal patch, each after its timestamp's text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from engine.errors import InvalidRequestError
from engine.multimodal.images import ImageInput, ImageLimits
from engine.multimodal.mrope import MRopePositions, mrope_positions
from engine.multimodal.prompt import flatten_messages
from engine.multimodal.qwen3_video import Qwen3VideoInput, Qwen3VideoProcessor
from engine.multimodal.qwen_images import QwenImageProcessor
from engine.multimodal.qwen_video import QwenVideoInput, QwenVideoProcessor
from engine.multimodal.requests import ImageRequests

QWEN_VL_MODEL_TYPES = ("qwen2_5_vl", "qwen3_vl")
VIDEO_PROCESSORS = {"qwen2_5_vl": QwenVideoProcessor, "qwen3_vl": Qwen3VideoProcessor}


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
        video_processor = VIDEO_PROCESSORS.get(getattr(hf_config, "model_type", None))
        self.videos: QwenVideoProcessor | None = None
        if video_processor is not None:
            self.videos = video_processor(model_dir, grid, self.limits)
            self.video_token_id: int = hf_config.video_token_id
            self.tokens_per_second = getattr(hf_config.vision_config, "tokens_per_second", None)
            # Qwen3-VL's timestamps: tokenized by ``expand``, which the InputProcessor
            # calls under the lock it holds for this (shared) tokenizer.
            self.tokenizer = tokenizer
            self.vision_start_id = getattr(hf_config, "vision_start_token_id", None)
            self.vision_end_id = getattr(hf_config, "vision_end_token_id", None)

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
        media = iter(images)
        expanded: list[int] = []
        for token_id in token_ids:
            if token_id not in media_tokens:
                expanded.append(token_id)
                continue
            image = next(media)
            if isinstance(image, Qwen3VideoInput):
                expanded += self._stamped_patches(image)
            else:
                expanded += [token_id] * self.processor.grid.num_tokens(image.pixel_values)
        return expanded

    def _stamped_patches(self, video: Qwen3VideoInput) -> list[int]:
        """What stands for a Qwen3-VL video's ``<|video_pad|>``: each temporal patch's
        ``<t seconds>`` and its tokens between vision start and end, as
        ``Qwen3VLProcessor.replace_video_token`` writes them. The timestamp text lies
        between special tokens, so tokenized alone it is what tokenizing the whole
        prompt gives."""
        patch_tokens = [self.video_token_id] * math.prod(video.pixel_values.shape[1:3])
        expanded: list[int] = []
        for seconds in video.timestamps:
            expanded += self.tokenizer.encode(f"<{seconds:.1f} seconds>", add_special_tokens=False)
            expanded += [self.vision_start_id, *patch_tokens, self.vision_end_id]
        return expanded

    def check(self, images: list[ImageInput]) -> None:
        videos = [image for image in images if isinstance(image, QwenVideoInput)]
        if len(images) - len(videos) > self.limits.max_images:
            raise InvalidRequestError(f"a prompt may hold at most {self.limits.max_images} images")
        if videos and self.videos is None:
            raise InvalidRequestError("this model does not accept videos")
        # Qwen2.5-VL's and Qwen3-VL's videos take different prompts and positions.
        if any(type(video) is not self.videos.input_type for video in videos):
            raise InvalidRequestError("a video prepared for another model (use chat_request)")
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
        for run in (run for image in images for run in self._runs(image)):
            if positions[start + run - 1] - positions[start] != run - 1:
                raise InvalidRequestError("an image's tokens must be consecutive in the prompt")
            start += run
        return positions

    def _runs(self, image: ImageInput) -> list[int]:
        """The lengths of the runs of consecutive tokens an image or video fills: one,
        but a Qwen3-VL video's, one a temporal patch."""
        if isinstance(image, Qwen3VideoInput):
            grid_t, *grid_hw = image.pixel_values.shape[:3]
            return [math.prod(grid_hw)] * grid_t
        return [self.processor.grid.num_tokens(image.pixel_values)]

    def mrope(self, token_ids: list[int], images: list[ImageInput]) -> MRopePositions | None:
        """The prompt's M-RoPE positions (None without images: plain positions)."""
        if not images:
            return None
        positions = self.positions(token_ids, images)
        starts, grids, intervals, first = [], [], [], 0
        for image in images:
            shape = tuple(image.pixel_values.shape)
            if isinstance(image, Qwen3VideoInput):  # each temporal patch as an image
                pieces = [(shape[1:3], 1.0)] * shape[0]
            elif isinstance(image, QwenVideoInput):
                pieces = [(shape[0:3], self._time_interval(image))]
            else:
                pieces = [(shape[1:3], 1.0)]
            for grid, interval in pieces:
                starts.append(positions[first])
                grids.append(grid)
                intervals.append(interval)
                first += math.prod(grid)
        return mrope_positions(len(token_ids), starts, grids, intervals)

    def _time_interval(self, video: QwenVideoInput) -> float:
        """Temporal positions between a video's temporal patches: a float32 product, as
        transformers multiplies its ``second_per_grid_ts`` tensor."""
        return float(np.float32(self.tokens_per_second) * np.float32(video.seconds_per_grid))
