"""M-RoPE positions of a prompt (Qwen2-VL and Qwen2.5-VL), as transformers'
``get_rope_index`` computes them.

Text tokens take one position in all three streams, counting on from the token before.
An image of ``h`` x ``w`` tokens (after merging) starting where the count stands at
``p`` takes temporal ``p``, height ``p + row`` and width ``p + column``; the text after
it continues from ``p + max(h, w)``, not from ``p + h * w``. A video of ``t`` temporal
patches of ``h`` x ``w`` tokens is ``t`` such grids in a row, all from ``p``, but the
temporal position of patch ``k`` is ``p + int(k * interval)``, its ``interval`` (the
config's ``tokens_per_second`` times the seconds one patch spans) in float32 as
transformers computes it; the text after it continues from ``p + max(h, w)`` still
(transformers 5.x; 4.x and vLLM went on from the video's largest position plus one).
Qwen3-VL's videos come here as one image grid per temporal patch, each at its own start
(its ``get_rope_index`` splits a video so; qwen_requests.py does the same). Past
the prompt a token's position is its index plus the prompt's ``delta`` (0 or less), in
all three streams: its generate counts on from the prompt's last position (not from its
``rope_deltas``, one past the largest, which a video's temporal patches can outrun).
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
    num_tokens: int,
    image_starts: list[int],
    image_grids: list[tuple[int, ...]],
    time_intervals: list[float] | None = None,
) -> MRopePositions:
    """The positions of a prompt of ``num_tokens`` whose image ``i`` fills the
    ``h * w`` tokens from index ``image_starts[i]`` (``image_grids[i] == (h, w)``, in
    merged tokens, raster order), or whose video ``i`` fills ``t * h * w`` tokens
    (``image_grids[i] == (t, h, w)``, spaced by ``time_intervals[i]``), the images and
    videos in order and not overlapping."""
    positions = np.empty((3, num_tokens), dtype=np.int64)
    index, position = 0, 0  # the next token's index, and its position if it is text
    for i, (start, grid) in enumerate(zip(image_starts, image_grids)):
        frames, height, width = grid if len(grid) == 3 else (1, *grid)
        text = start - index
        positions[:, index:start] = np.arange(position, position + text)
        position += text
        end = start + frames * height * width
        interval = np.float32(time_intervals[i] if time_intervals else 1.0)
        temporal = (np.arange(frames, dtype=np.float32) * interval).astype(np.int64)
        positions[0, start:end] = position + np.repeat(temporal, height * width)
        positions[1, start:end] = position + np.tile(np.repeat(np.arange(height), width), frames)
        positions[2, start:end] = position + np.tile(np.arange(width), height * frames)
        index, position = end, position + max(height, width)
    positions[:, index:] = np.arange(position, position + num_tokens - index)
    return MRopePositions(positions, position + num_tokens - index - num_tokens)
