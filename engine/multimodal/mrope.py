"""M-RoPE positions of a prompt (Qwen2-VL and Qwen2.5-VL), as transformers'
``get_rope_index`` computes them.

Text tokens take one position in all three streams, counting on from the token before.
An image of ``h`` x ``w`` tokens (after merging) starting where the count stands at
``p`` takes temporal ``p``, height ``p + row`` and width ``p + column``; the text after
it continues from ``p + max(h, w)``, not from ``p + h * w``. So past the prompt a token's
position is its index plus the prompt's ``delta`` (0 or less), in all three streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class MRopePositions:
    """A prompt's positions ``[3, num_prompt_tokens]`` (int64) and the ``delta`` that
    every later token's index takes: ``position = index + delta``."""

    positions: np.ndarray
    delta: int


def mrope_positions(
    num_tokens: int, image_starts: list[int], image_grids: list[tuple[int, int]]
) -> MRopePositions:
    """The positions of a prompt of ``num_tokens`` whose image ``i`` fills the
    ``h * w`` tokens from index ``image_starts[i]`` (``image_grids[i] == (h, w)``, in
    merged tokens, raster order), the images in order and not overlapping."""
    positions = np.empty((3, num_tokens), dtype=np.int64)
    index, position = 0, 0  # the next token's index, and its position if it is text
    for start, (height, width) in zip(image_starts, image_grids):
        text = start - index
        positions[:, index:start] = np.arange(position, position + text)
        position += text
        end = start + height * width
        positions[0, start:end] = position
        positions[1, start:end] = position + np.repeat(np.arange(height), width)
        positions[2, start:end] = position + np.tile(np.arange(width), height)
        index, position = end, position + max(height, width)
    positions[:, index:] = np.arange(position, position + num_tokens - index)
    return MRopePositions(positions, position + num_tokens - index - num_tokens)
