"""Tiny random Qwen2.5-VL checkpoints shared by the Qwen2.5-VL tests."""

from __future__ import annotations

# 14 px patches merged 2 x 2 (28 px tokens); windows of 2 x 2 tokens, so small images
# still have several, with ragged edges; layers 1 and 3 attend over the whole image.
VISION = dict(
    depth=4,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=56,
    fullatt_block_indexes=[1, 3],
    out_hidden_size=64,
)
