"""Qwen3-VL's videos, as transformers' ``Qwen3VLVideoProcessor`` (with the
``Qwen3VLProcessor`` around it) does them; what differs from Qwen2.5-VL's (qwen_video.py):

- sampling: ``int(num_frames / fps * 2)`` frames (at least ``min_frames``, at most
  ``max_frames`` and every frame), spread over the whole video with its last frame
  (``np.linspace(0, num_frames - 1, n).round()``); not rounded to the temporal patch:
  an odd count's last temporal patch repeats its last frame;
- resize: the pixel bounds (``size.shortest_edge``/``longest_edge``; 32 px tokens) hold
  for the whole clip, ``frames x height x width``, not for one frame; a frame smaller
  than a token each way is scaled up to one first;
- mean and std 0.5;
- the prompt: the template's one ``<|video_pad|>`` becomes, for each temporal patch,
  ``<t seconds>`` (the mean of its first and last frame's times, one decimal) followed by
  ``<|vision_start|>``, the patch's video tokens and ``<|vision_end|>``
  (qwen_requests.py writes them);
- M-RoPE: each temporal patch is positioned as an image of its own, from where the count
  stands (transformers' ``get_rope_index`` splits ``video_grid_thw`` into one-frame
  grids); the timestamps between them count on as text.

The settings are read as for Qwen2.5-VL (``video_preprocessor_config.json``, else
``preprocessor_config.json``, else the class defaults); the resize is the same
torchvision-equivalent bicubic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import InvalidRequestError
from engine.multimodal.qwen_video import QwenVideoInput, QwenVideoProcessor
from engine.multimodal.video import VideoInfo

IMAGENET_STANDARD = (0.5, 0.5, 0.5)
# transformers' frame rate for a video whose container names none.
UNKNOWN_FPS = 24.0


@dataclass(frozen=True, eq=False)
class Qwen3VideoInput(QwenVideoInput):
    """A Qwen2.5-VL-laid-out video with the time of each temporal patch, in seconds."""

    timestamps: tuple[float, ...]


class Qwen3VideoProcessor(QwenVideoProcessor):
    default_min_pixels = 128 * 32 * 32
    default_max_pixels = 32 * 32 * 768
    default_mean = default_std = IMAGENET_STANDARD
    input_type = Qwen3VideoInput

    def _configure(self, pp: dict) -> None:
        super()._configure(pp)
        # Qwen3VLVideoProcessor reads its bounds from ``size`` only.
        size = pp.get("size") or {}
        self.min_pixels = int(size.get("shortest_edge", self.default_min_pixels))
        self.max_pixels = int(size.get("longest_edge", self.default_max_pixels))
        # The per-frame token ceiling ``cap_pixels_per_frame`` applies.
        self.max_frame_tokens = int(pp.get("max_video_tokens", 768))

    def sample(self, info: VideoInfo) -> list[int]:
        """transformers' ``Qwen3VLVideoProcessor.sample_frames`` with ``fps``."""
        fps = info.fps or UNKNOWN_FPS
        num_frames = int(info.num_frames / fps * self.fps)
        num_frames = min(max(num_frames, self.min_frames), self.max_frames, info.num_frames)
        t = self.grid.temporal_patch_size
        if num_frames < t:
            raise InvalidRequestError(f"a video needs at least {t} frames; this one has fewer")
        return np.linspace(0, info.num_frames - 1, num_frames).round().astype(int).tolist()

    def resized_size(self, width: int, height: int, num_frames: int) -> tuple[int, int]:
        """(width, height) every frame is resized to."""
        factor = self.grid.factor
        max_pixels = self.max_pixels
        if self.cap_pixels_per_frame:
            frame_cap = self.max_frame_tokens * factor * factor
            per_frame = max(
                min(frame_cap, self.max_pixels // num_frames), int(self.min_pixels * 1.05)
            )
            max_pixels = per_frame * num_frames
        new_height, new_width = smart_resize_video(
            num_frames,
            height,
            width,
            self.grid.temporal_patch_size,
            factor,
            self.min_pixels,
            max_pixels,
        )
        return new_width, new_height

    def _video_input(
        self, pixel_values: torch.Tensor, content_hash: bytes, info: VideoInfo, indices: list[int]
    ) -> Qwen3VideoInput:
        base = super()._video_input(pixel_values, content_hash, info, indices)
        timestamps = patch_timestamps(
            indices, info.fps or UNKNOWN_FPS, self.grid.temporal_patch_size
        )
        return Qwen3VideoInput(
            base.pixel_values, base.content_hash, base.seconds_per_grid, timestamps
        )


def patch_timestamps(indices: list[int], fps: float, temporal_patch_size: int) -> tuple[float, ...]:
    """Each temporal patch's time: the mean of its first and last frame's (the last frame
    repeated to fill the last patch), as ``Qwen3VLProcessor._calculate_timestamps``."""
    t = temporal_patch_size
    padded = list(indices) + [indices[-1]] * (-len(indices) % t)
    seconds = [index / fps for index in padded]
    return tuple((seconds[i] + seconds[i + t - 1]) / 2 for i in range(0, len(seconds), t))


def smart_resize_video(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int,
    factor: int,
    min_pixels: int,
    max_pixels: int,
) -> tuple[int, int]:
    """The (height, width) Qwen3-VL resizes a video's frames to: multiples of ``factor``
    nearest the frame's own, scaled (keeping the aspect ratio) so that the clip's pixels,
    its frame count rounded to ``temporal_factor`` times a frame's, fall within
    ``[min_pixels, max_pixels]``."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise InvalidRequestError(
            f"a video's frames may be at most 200 times as long as they are wide; "
            f"these are {width}x{height}"
        )
    new_height = round(height / factor) * factor
    new_width = round(width / factor) * factor
    clip_frames = round(num_frames / temporal_factor) * temporal_factor
    if clip_frames * new_height * new_width > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        new_height = max(factor, math.floor(height / beta / factor) * factor)
        new_width = max(factor, math.floor(width / beta / factor) * factor)
    elif clip_frames * new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_height, new_width
