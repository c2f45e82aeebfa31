"""NVILA and NVILA-Lite: VILA's layout (llm/ Qwen2, vision_tower/ SigLIP at 448,
mm_projector/) with images cut into tiles (engine/multimodal/nvila_images.py).

NVILA-Lite (``image_aspect_ratio: dynamic``) encodes each tile, thumbnail included, as an
image of its own: tower, then ``mlp_downsample_3x3_fix``. NVILA (``dynamic_s2``) runs the
tower over the tiles of every scale in ``s2_scales``, reassembles each scale's feature
map, area-resizes all to one scale's size, concatenates them on channels (hence
``mm_hidden_size`` = tower width x scales), cuts that map into tiles again, projects each
(``mlp_downsample``) and reads the projected tiles back as one grid, row by row
(``merge_features_for_dynamic_s2`` / ``encode_images`` in NVlabs/VILA
llava/model/llava_arch.py). An image that is not tiled (conversations with several
images) is one tile whose features stand for every scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.errors import UnsupportedModelError
from engine.models.vila import VilaConfig, VilaForCausalLM


class NvilaForCausalLM(VilaForCausalLM):
    def __init__(self, config: VilaConfig):
        super().__init__(config)
        self.num_image_tokens = None  # a tiled NVILA image takes as many as its grid gives
        scales = config.s2_scales
        width = config.vision_config.hidden_size * max(1, len(scales))
        if config.mm_hidden_size != width:
            raise UnsupportedModelError(
                f"mm_hidden_size {config.mm_hidden_size} is not the vision tower's "
                f"{config.vision_config.hidden_size} channels x {max(1, len(scales))} scales"
            )
        tile = config.vision_config.image_size
        if scales and scales[0] != tile:
            raise UnsupportedModelError(
                f"s2_scales start at {scales[0]}, the vision tower takes {tile}"
            )
        # Tiles of every scale but the last, which come first in a tiled image.
        self.num_lower_tiles = sum((scale // tile) ** 2 for scale in scales[:-1])
        num_features = self.vision_tower.num_patches
        self.patch_side = math.isqrt(num_features)
        self.tokens_per_tile = self.mm_projector.num_tokens(num_features)
        idx = config.s2_resize_output_to_scale_idx
        if scales and not -len(scales) <= idx < len(scales):
            raise UnsupportedModelError(f"s2_resize_output_to_scale_idx {idx} names no scale")
        # None: the last scale's own grid of tiles.
        self.output_blocks = (
            None if not scales or idx % len(scales) == len(scales) - 1 else (scales[idx] // tile)
        )

    def num_tokens(self, pixel_shape: tuple[int, ...]) -> int:
        """Positions of an image: one tile ``[3, S, S]``, or NVILA's tiled image."""
        if len(pixel_shape) == 3:
            return self.tokens_per_tile
        rows, cols = self._grid(pixel_shape)
        if self.output_blocks is not None:
            rows = cols = self.output_blocks
        return rows * cols * self.tokens_per_tile

    def _grid(self, pixel_shape: tuple[int, ...]) -> tuple[int, int]:
        """``(rows, cols)`` of the last scale's tiles in a ``[lower_rows + rows, cols, 3,
        S, S]`` image."""
        cols = pixel_shape[1]
        return pixel_shape[0] - -(-self.num_lower_tiles // cols), cols

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, 3, S, S]`` (one tile each) -> ``[num_images, tokens_per_tile,
        hidden]``; or NVILA's tiled images, ``[num_images, lower_rows + rows, cols, 3, S,
        S]`` (engine/multimodal/nvila_images.py), -> ``[num_images, num_tokens, hidden]``."""
        if pixel_values.dim() == 4:
            features = self.vision_tower(pixel_values)
            if self.config.s2_scales:
                features = features.repeat(1, 1, len(self.config.s2_scales))
            return self.mm_projector(features)
        return torch.stack([self._encode_tiled(image) for image in pixel_values])

    def _encode_tiled(self, canvas: torch.Tensor) -> torch.Tensor:
        rows, cols = self._grid(tuple(canvas.shape))
        lower = canvas[:-rows].flatten(0, 1)[: self.num_lower_tiles]
        tiles = torch.cat([lower, canvas[-rows:].flatten(0, 1)])
        features = self.vision_tower(tiles)  # [num_tiles, patch_side ** 2, C]
        maps, first = [], 0
        tile = self.config.vision_config.image_size
        for scale in self.config.s2_scales[:-1]:
            k = scale // tile
            maps.append(_merge_tiles(features[first : first + k * k], k, k, self.patch_side))
            first += k * k
        maps.append(_merge_tiles(features[first:], rows, cols, self.patch_side))
        size = maps[self.config.s2_resize_output_to_scale_idx].shape[-2:]
        merged = torch.cat(
            [F.interpolate(m.float(), size=size, mode="area").to(m.dtype) for m in maps], dim=1
        )  # [1, C * num_scales, H, W]
        if self.output_blocks is not None:
            rows = cols = self.output_blocks
        projected = self.mm_projector(_split_tiles(merged, rows, cols))
        side = math.isqrt(projected.shape[1])
        grid = _merge_tiles(projected, rows, cols, side)  # [1, hidden, rows * side, cols * side]
        return grid[0].flatten(1).t()


def _merge_tiles(tiles: torch.Tensor, rows: int, cols: int, side: int) -> torch.Tensor:
    """``[rows * cols, side * side, C]`` tiles (row by row) -> their ``[1, C, rows *
    side, cols * side]`` map."""
    c = tiles.shape[-1]
    grid = tiles.reshape(rows, cols, side, side, c).permute(4, 0, 2, 1, 3)
    return grid.reshape(1, c, rows * side, cols * side)


def _split_tiles(feature_map: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A ``[1, C, H, W]`` map -> ``[rows * cols, (H / rows) * (W / cols), C]`` tiles,
    row by row, each read row by row."""
    _, c, height, width = feature_map.shape
    h, w = height // rows, width // cols
    tiles = feature_map[0].reshape(c, rows, h, cols, w).permute(1, 3, 2, 4, 0)
    return tiles.reshape(rows * cols, h * w, c)
