"""NVILA's image tiling (NVlabs/VILA llava/mm_utils.py: ``dynamic_preprocess``,
``dynamic_s2_preprocess``, ``find_closest_aspect_ratio``), each tile then preprocessed
by the SigLIP processor (a resize to the tower's side, which for a tile is a no-op, and
normalisation).

- NVILA-Lite (``dynamic``): the grid of ``min_tiles``..``max_tiles`` tiles whose shape is
  closest to the image's, cut row by row from a bicubic resize to that grid, plus a
  thumbnail (the whole image resized to one tile) when there is more than one tile. Each
  tile is an image of its own in the prompt.
- NVILA (``dynamic_s2``): for each scale of ``s2_scales`` but the last, a square grid of
  (scale / tile)^2 tiles of the image resized to that scale; for the last, the closest
  grid of at least (last / tile)^2 tiles. One image, laid out as ``[lower_rows + rows,
  cols, 3, S, S]``: the lower scales' tiles row by row in the first ``lower_rows`` rows
  (zero-padded), then the last scale's grid, so the grid travels in the tensor's shape.

NVILA tiles only when the conversation holds exactly one image; otherwise each image is
one tile, resized whole (``generate_content`` in llava/model/llava_arch.py).
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from engine.multimodal.images import ImageInput, ImageProcessor, check_size, image_input


def closest_grid(
    width: int, height: int, min_tiles: int, max_tiles: int, tile: int
) -> tuple[int, int]:
    """``(cols, rows)`` of the grid whose aspect ratio is nearest the image's; on a tie the
    larger grid wins when the image has more than half its pixels."""
    # NOTE: ties between grids of one tile count keep the set's order, as NVILA's code does.
    grids = {
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    }
    best, best_diff = (1, 1), math.inf
    for cols, rows in sorted(grids, key=lambda grid: grid[0] * grid[1]):
        diff = abs(width / height - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def cut_tiles(image: Image.Image, cols: int, rows: int, tile: int) -> list[Image.Image]:
    """The image resized (bicubic) to ``cols x rows`` tiles, cut row by row."""
    resized = image.resize((cols * tile, rows * tile), Image.Resampling.BICUBIC)
    return [
        resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
        for r in range(rows)
        for c in range(cols)
    ]


class NvilaImageProcessor:
    """One image's tiles as NVILA cuts them, normalised by the tower's processor."""

    def __init__(self, processor: ImageProcessor, config):
        self.processor = processor
        self.tile = config.vision_config.image_size
        self.min_tiles, self.max_tiles = config.min_tiles, config.max_tiles
        self.scales = config.s2_scales

    def plain(self, image: Image.Image) -> ImageInput:
        """The image as one tile (its whole, resized): ``[3, S, S]``."""
        return image_input(self.processor.preprocess(image))

    def lite_tiles(self, image: Image.Image) -> list[ImageInput]:
        """NVILA-Lite's tiles and thumbnail, each ``[3, S, S]``."""
        cols, rows = closest_grid(*image.size, self.min_tiles, self.max_tiles, self.tile)
        tiles = self._cut(image, cols, rows)
        if len(tiles) > 1:
            tiles.append(image.resize((self.tile, self.tile), Image.Resampling.BICUBIC))
        return [image_input(self.processor.preprocess(tile)) for tile in tiles]

    def s2_tiles(self, image: Image.Image) -> ImageInput:
        """NVILA's multi-scale tiles, ``[lower_rows + rows, cols, 3, S, S]``."""
        lower: list[Image.Image] = []
        for scale in self.scales[:-1]:
            k = scale // self.tile
            lower += self._cut(image, k, k)
        min_tiles = (self.scales[-1] // self.tile) ** 2
        cols, rows = closest_grid(*image.size, min_tiles, self.max_tiles, self.tile)
        grid = self._cut(image, cols, rows)
        lower_rows = -(-len(lower) // cols)
        canvas = torch.zeros(lower_rows + rows, cols, 3, self.tile, self.tile)
        for i, tile in enumerate(lower + [None] * (lower_rows * cols - len(lower)) + grid):
            if tile is not None:
                canvas[i // cols, i % cols] = self.processor.preprocess(tile)
        return image_input(canvas)

    def _cut(self, image: Image.Image, cols: int, rows: int) -> list[Image.Image]:
        check_size(cols * self.tile, rows * self.tile, self.processor.limits.max_pixels, " tiled")
        return cut_tiles(image, cols, rows, self.tile)
