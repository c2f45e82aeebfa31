"""Qwen2.5-VL's videos, as transformers' ``Qwen2VLVideoProcessor`` (with the
``Qwen2_5_VLProcessor`` around it) does them: frames sampled at ``fps`` (2 a second by
default, as Qwen's qwen-vl-utils does; transformers alone would take every frame), at
least ``min_frames`` and at most ``max_frames``, a multiple of the temporal patch;
resized to the multiples of 28 px within the video's pixel bounds that the first
frame's size gives; cut into patches two frames deep. ``seconds_per_grid`` (transformers'
``second_per_grid_ts``) spaces the temporal M-RoPE positions of the video's tokens.

The settings are read as transformers reads them: ``video_preprocessor_config.json``,
else ``preprocessor_config.json`` (so the Hub's checkpoints, which ship only the latter,
take the image bounds ``min_pixels``/``max_pixels`` for their frames too), else the
class defaults. transformers resizes with torchvision, which we do not install: the
resize here is torchvision's algorithm on CPU for uint8 bicubic (torch's antialiased
bicubic interpolation in fp32, clamped and rounded back to uint8).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import InvalidRequestError, ModelLoadError
from engine.multimodal.images import CLIP_MEAN, CLIP_STD, ImageInput, ImageLimits, check_size
from engine.multimodal.qwen_images import QwenGrid, smart_resize
from engine.multimodal.video import LoadedVideo, VideoInfo, decode_frames, video_bytes

# Qwen2VLVideoProcessor's defaults (Qwen3VLVideoProcessor's too), where the config is silent.
DEFAULT_MIN_FRAMES = 4
DEFAULT_MAX_FRAMES = 768
DEFAULT_FPS = 2.0  # qwen-vl-utils' FPS
# Qwen2VLVideoProcessor.max_video_tokens: the budget cap_pixels_per_frame shares out.
MAX_VIDEO_TOKENS = 128000


@dataclass(frozen=True, eq=False)
class QwenVideoInput(ImageInput):
    """A video's patches ``[grid_t, grid_h / m, grid_w / m, m * m, patch_dim]`` and the
    seconds one temporal patch spans."""

    seconds_per_grid: float


class QwenVideoProcessor:
    """Qwen2.5-VL's; the base of Qwen3-VL's (qwen3_video.py), which samples, resizes and
    stamps its frames otherwise."""

    default_min_pixels = 128 * 28 * 28
    default_max_pixels = 28 * 28 * 768
    default_mean, default_std = CLIP_MEAN, CLIP_STD
    input_type: type[QwenVideoInput] = QwenVideoInput

    def __init__(self, model_dir: Path, grid: QwenGrid, limits: ImageLimits):
        self.grid = grid
        self.limits = limits
        pp = _read_config(model_dir)
        if float(pp.get("rescale_factor", 1 / 255)) != 1 / 255:
            raise ModelLoadError(f"{model_dir}: a video rescale_factor other than 1/255")
        self._configure(pp)

    def _configure(self, pp: dict) -> None:
        """The settings of the video (or image) preprocessor config ``pp``."""
        size = pp.get("size") or {}
        self.min_pixels = int(
            pp.get("min_pixels") or size.get("shortest_edge", self.default_min_pixels)
        )
        self.max_pixels = int(
            pp.get("max_pixels") or size.get("longest_edge", self.default_max_pixels)
        )
        self.min_frames = int(pp.get("min_frames", DEFAULT_MIN_FRAMES))
        self.max_frames = int(pp.get("max_frames", DEFAULT_MAX_FRAMES))
        self.fps = float(pp.get("fps") or DEFAULT_FPS)
        self.cap_pixels_per_frame = bool(pp.get("cap_pixels_per_frame"))
        self.mean = torch.tensor(pp.get("image_mean", self.default_mean)) * 255.0
        self.std = torch.tensor(pp.get("image_std", self.default_std)) * 255.0

    def sample(self, info: VideoInfo) -> list[int]:
        """transformers' ``sample_frames`` with ``fps``: the frame count rounded down to
        the temporal patch, indices stepped evenly from the first frame (float32, as
        ``torch.arange`` computes them)."""
        t = self.grid.temporal_patch_size
        max_frames = math.floor(min(self.max_frames, info.num_frames) / t) * t
        num_frames = info.num_frames / info.fps * self.fps if info.fps else info.num_frames
        num_frames = min(max(num_frames, self.min_frames), max_frames, info.num_frames)
        num_frames = math.floor(num_frames / t) * t
        if num_frames < t:
            raise InvalidRequestError(f"a video needs at least {t} frames; this one has fewer")
        step = info.num_frames / num_frames
        return torch.arange(0, info.num_frames, step).int().tolist()

    def load(self, url: str) -> LoadedVideo:
        """Fetch, decode and preprocess the video of a ``video_url`` part."""
        data = video_bytes(url, self.limits)
        size: list[tuple[int, int]] = []  # (width, height) of the resized frames

        def sample(info: VideoInfo) -> list[int]:
            # Frames the resize would make larger than the pixel limit, or more tokens
            # than the context holds, are refused before any frame is decoded.
            indices = self.sample(info)
            size.append(self.resized_size(info.width, info.height, len(indices)))
            check_size(*size[0], self.limits.max_pixels, " resized for the model")
            self._check_tokens(len(indices), *size[0])
            return indices

        info, frames = decode_frames(data, sample, self.limits, lambda f: self.resize(f, *size[0]))
        indices = self.sample(info)
        pixel_values = self.normalize(torch.stack(frames))
        # The file and what was made of it: the same bytes sampled or cut otherwise
        # are another video.
        digest = hashlib.blake2b(data, digest_size=16)
        digest.update(repr((indices, tuple(pixel_values.shape))).encode())
        video = self._video_input(pixel_values, digest.digest(), info, indices)
        return LoadedVideo([video], "", [{"type": "video"}])

    def _video_input(
        self, pixel_values: torch.Tensor, content_hash: bytes, info: VideoInfo, indices: list[int]
    ) -> QwenVideoInput:
        sampled_fps = len(indices) / info.num_frames * info.fps if info.fps else 24.0
        return QwenVideoInput(
            pixel_values, content_hash, self.grid.temporal_patch_size / sampled_fps
        )

    def _check_tokens(self, num_frames: int, width: int, height: int) -> None:
        factor, max_tokens = self.grid.factor, self.limits.max_video_tokens
        num_patches = -(-num_frames // self.grid.temporal_patch_size)
        num_tokens = num_patches * (height // factor) * (width // factor)
        if max_tokens is not None and num_tokens >= max_tokens:
            raise InvalidRequestError(
                f"a video sampled to {num_frames} frames of {width}x{height} takes "
                f"{num_tokens} tokens, more than the context of {max_tokens} holds"
            )

    def resized_size(self, width: int, height: int, num_frames: int) -> tuple[int, int]:
        """(width, height) every frame is resized to."""
        max_pixels = self.max_pixels
        if self.cap_pixels_per_frame:
            factor = self.grid.factor
            total_pixels = int(MAX_VIDEO_TOKENS * factor * factor * 0.9)
            share = total_pixels * self.grid.temporal_patch_size // num_frames
            max_pixels = max(min(max_pixels, share), int(self.min_pixels * 1.05))
        new_height, new_width = smart_resize(
            height, width, self.grid.factor, self.min_pixels, max_pixels
        )
        return new_width, new_height

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """RGB frames ``[n, H, W, 3]`` uint8 -> patches ``[grid_t, grid_h / m, grid_w / m,
        m * m, 3 * t * p * p]`` fp32."""
        num_frames, height, width, _ = frames.shape
        size = self.resized_size(width, height, num_frames)
        return self.normalize(torch.stack([self.resize(frame, *size) for frame in frames]))

    @staticmethod
    def resize(frame: np.ndarray, width: int, height: int) -> torch.Tensor:
        """An RGB frame ``[H, W, 3]`` uint8 -> ``[3, height, width]`` uint8, as
        torchvision resizes uint8 (bicubic, antialiased) on CPU."""
        pixels = torch.from_numpy(frame).permute(2, 0, 1)
        if pixels.shape[1:] == (height, width):
            return pixels.contiguous()
        resized = F.interpolate(
            pixels[None].float(),
            (height, width),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )
        return resized[0].clamp_(0, 255).round_().to(torch.uint8)

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """Resized frames ``[n, 3, h, w]`` uint8 -> patches (fp32), rescaled and
        normalised in one step as transformers' torch processors do."""
        video = (video.float() - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
        return self._patches(video)

    def _patches(self, video: torch.Tensor) -> torch.Tensor:
        p, m, t = self.grid.patch_size, self.grid.merge_size, self.grid.temporal_patch_size
        if pad := -video.shape[0] % t:  # the last frame repeated to fill a temporal patch
            video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
        num_frames, channels, height, width = video.shape
        grid_t, blocks_h, blocks_w = num_frames // t, height // (p * m), width // (p * m)
        patches = video.reshape(grid_t, t, channels, blocks_h, m, p, blocks_w, m, p)
        # [grid_t, blocks_h, blocks_w, m (row), m (col), channels, t, p, p]
        patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return patches.reshape(grid_t, blocks_h, blocks_w, m * m, -1).contiguous()


def _read_config(model_dir: Path) -> dict:
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        path = model_dir / name
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ModelLoadError(f"{path} is corrupt: {e}") from None
    return {}
