"""Qwen2.5-VL's image preprocessing, as transformers' PIL processor for Qwen2-VL
(``Qwen2VLImageProcessorPil``) does it: resize each image (PIL bicubic, on its 8-bit
pixels) to the nearest multiples of patch x merge that keep it within the pixel bounds,
rescale and normalise, then cut it into patches, each still image repeated over the
temporal patch. (transformers' torch processor resizes with torchvision, which rounds
some pixels differently: the PIL one is the reference here.)

Decoding (formats, EXIF rotation, modes, transparency, limits) is images.py's, shared
with the other VLMs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.errors import ModelLoadError
from engine.multimodal.images import (
    CLIP_MEAN,
    CLIP_STD,
    ImageInput,
    ImageLimits,
    check_size,
    decode_image,
    image_bytes,
)

# transformers' defaults for Qwen2-VL's processor, where preprocessor_config.json is silent.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280
# Steps the processor always takes; a preprocessor_config.json may turn each off.
SKIPPABLE_STEPS = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")


@dataclass(frozen=True)
class QwenGrid:
    """How the processor cuts images: ``patch_size`` pixels a patch, ``merge_size`` x
    ``merge_size`` patches a language-model token, ``temporal_patch_size`` frames a patch."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int

    @property
    def factor(self) -> int:  # pixels a token spans, each way
        return self.patch_size * self.merge_size

    def num_tokens(self, pixel_values: torch.Tensor) -> int:
        """Language-model tokens of an image laid out by ``QwenImageProcessor``."""
        return math.prod(pixel_values.shape[:3])


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    """The (height, width) Qwen2-VL resizes an image to: multiples of ``factor``, nearest
    the image's own, scaled (keeping the aspect ratio) into ``[min_pixels, max_pixels]``."""
    new_height = round(height / factor) * factor
    new_width = round(width / factor) * factor
    if new_height * new_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_height = max(factor, math.floor(height / beta / factor) * factor)
        new_width = max(factor, math.floor(width / beta / factor) * factor)
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_height, new_width


def qwen_image_input(pixel_values: torch.Tensor) -> ImageInput:
    """An ImageInput whose hash covers the patch grid too: the same bytes cut into a
    different grid are a different image (and take other positions)."""
    digest = hashlib.blake2b(repr(tuple(pixel_values.shape)).encode(), digest_size=16)
    digest.update(pixel_values.contiguous().numpy().tobytes())
    return ImageInput(pixel_values, digest.digest())


class QwenImageProcessor:
    """Read from ``preprocessor_config.json``: the pixel bounds (``min_pixels`` and
    ``max_pixels``, or ``size.shortest_edge`` and ``size.longest_edge``, which despite
    their names are pixel counts too; ``min_pixels``/``max_pixels`` given here override
    them, as a server's flags do), patching, mean and std, resampling."""

    def __init__(
        self,
        model_dir: Path,
        hf_config,
        limits: ImageLimits | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ):
        self.limits = limits or ImageLimits()
        path = model_dir / "preprocessor_config.json"
        try:
            pp = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path} is corrupt: {e}") from None
        vision = hf_config.vision_config
        self.grid = QwenGrid(
            pp.get("patch_size", vision.patch_size),
            pp.get("merge_size", vision.spatial_merge_size),
            pp.get("temporal_patch_size", vision.temporal_patch_size),
        )
        if (self.grid.patch_size, self.grid.merge_size, self.grid.temporal_patch_size) != (
            vision.patch_size,
            vision.spatial_merge_size,
            vision.temporal_patch_size,
        ):
            raise ModelLoadError(f"{path} cuts patches other than the vision tower takes")
        skipped = [step for step in SKIPPABLE_STEPS if pp.get(step) is False]
        if skipped:
            raise ModelLoadError(f"{path} turns off {', '.join(skipped)}: not supported")
        size = pp.get("size") or {}
        self.min_pixels = int(
            min_pixels or pp.get("min_pixels") or size.get("shortest_edge", DEFAULT_MIN_PIXELS)
        )
        self.max_pixels = int(
            max_pixels or pp.get("max_pixels") or size.get("longest_edge", DEFAULT_MAX_PIXELS)
        )
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ModelLoadError(
                f"min_pixels {self.min_pixels} and max_pixels {self.max_pixels} are not a "
                f"range (from {path}, and the engine's resize_min_pixels/resize_max_pixels)"
            )
        self.mean = np.array(pp.get("image_mean", CLIP_MEAN), dtype=np.float32)
        self.std = np.array(pp.get("image_std", CLIP_STD), dtype=np.float32)
        self.rescale_factor = float(pp.get("rescale_factor", 1 / 255))
        self.resample = Image.Resampling(pp.get("resample", Image.Resampling.BICUBIC))

    def load(self, url: str) -> ImageInput:
        """Decode and preprocess the image of an ``image_url`` part."""
        image = decode_image(image_bytes(url, self.limits), self.limits)
        return qwen_image_input(self.preprocess(image))

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of ``width`` x ``height`` is resized to."""
        new_height, new_width = smart_resize(
            height, width, self.grid.factor, self.min_pixels, self.max_pixels
        )
        return new_width, new_height

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB image -> ``[1, grid_h / m, grid_w / m, m * m, 3 * t * p * p]`` fp32."""
        size = self.resized_size(*image.size)
        check_size(*size, self.limits.max_pixels, " resized for the model")
        image = image.resize(size, self.resample)
        # transformers' arithmetic exactly: rescale in float64, then normalise in float32.
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # [3, H, W]
        pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        pixels = ((pixels.T - self.mean) / self.std).T
        return torch.from_numpy(self._patches(np.ascontiguousarray(pixels)))

    def _patches(self, pixels: np.ndarray) -> np.ndarray:
        p, m, t = self.grid.patch_size, self.grid.merge_size, self.grid.temporal_patch_size
        channels, height, width = pixels.shape
        blocks_h, blocks_w = height // (p * m), width // (p * m)
        patches = pixels.reshape(channels, blocks_h, m, p, blocks_w, m, p)
        # [blocks_h, blocks_w, m (row), m (col), channels, p, p]
        patches = patches.transpose(1, 4, 2, 5, 0, 3, 6)
        # A still image fills every frame of the temporal patch.
        patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
        return np.ascontiguousarray(patches).reshape(1, blocks_h, blocks_w, m * m, -1)
