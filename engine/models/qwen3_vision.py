"""Qwen3-VL's vision tower: Qwen2.5-VL's ViT (qwen_vision.py: patch embedding, attention
with the 2-D rotary, the processor's patch layout) with LayerNorms, a plain two-layer MLP,
full attention in every layer, learned position embeddings resampled to each image's
patch grid, and DeepStack: the outputs of ``deepstack_visual_indexes`` layers merged by
mergers of their own, which the language model adds into its first layers' hidden states.

Module names follow the Hugging Face checkpoints (``visual.*``), so weights load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.qwen_vision import (
    VISION_EPS,
    PatchRotary,
    QwenPatchEmbed,
    QwenVisionBlock,
    patch_coordinates,
)
from engine.models.vision import activation


class Qwen3VisionMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.linear_fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.linear_fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act(self.linear_fc1(x)))


class Qwen3PatchMerger(nn.Module):
    """Each merged token's ``m * m`` patches side by side through a two-layer GELU MLP
    into the language model's width, after a LayerNorm over each patch (the main merger)
    or over the patches side by side (``postshuffle``: the DeepStack mergers)."""

    def __init__(self, config, postshuffle: bool):
        super().__init__()
        self.merged_size = config.hidden_size * config.spatial_merge_size**2
        self.postshuffle = postshuffle
        norm_size = self.merged_size if postshuffle else config.hidden_size
        self.norm = nn.LayerNorm(norm_size, eps=VISION_EPS)
        self.linear_fc1 = nn.Linear(self.merged_size, self.merged_size)
        self.linear_fc2 = nn.Linear(self.merged_size, config.out_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [num_patches, hidden]
        x = self.norm(x.view(-1, self.merged_size) if self.postshuffle else x)
        return self.linear_fc2(F.gelu(self.linear_fc1(x.view(-1, self.merged_size))))


class Qwen3VisionTower(nn.Module):
    """``forward(patches)`` for one still image's patches (the processor's 5-D layout,
    ``grid_t`` 1) returns ``[num_tokens, num_features * out_hidden_size]`` in raster
    order: the merger's features, then each DeepStack merger's, side by side, so the
    engine keeps, caches and slices them per token as one tensor."""

    def __init__(self, config):
        super().__init__()
        self.merge_size = config.spatial_merge_size
        self.rotary = PatchRotary(config)
        # The learned positions form a square grid, resampled to each image's.
        self.grid_side = int(config.num_position_embeddings**0.5)
        self.deepstack_layers = list(config.deepstack_visual_indexes)
        self.patch_embed = QwenPatchEmbed(config, bias=True)
        self.pos_embed = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        self.blocks = nn.ModuleList(
            QwenVisionBlock(
                config, lambda size: nn.LayerNorm(size, eps=VISION_EPS), Qwen3VisionMLP(config)
            )
            for _ in range(config.depth)
        )
        self.merger = Qwen3PatchMerger(config, postshuffle=False)
        self.deepstack_merger_list = nn.ModuleList(
            Qwen3PatchMerger(config, postshuffle=True) for _ in self.deepstack_layers
        )

    @property
    def num_features(self) -> int:
        """Feature vectors each token has: the merger's and one per DeepStack layer."""
        return 1 + len(self.deepstack_layers)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        grid_t, blocks_h, blocks_w = patches.shape[:3]
        assert grid_t == 1, "the tower encodes still images only"
        rows, cols = patch_coordinates(blocks_h, blocks_w, self.merge_size, patches.device)
        cos, sin = self.rotary(rows, cols)
        x = self.patch_embed(patches.flatten(0, 3))
        x = x + self._position_embeddings(rows, cols, blocks_h, blocks_w).to(x.dtype)
        # In tower order, whatever the config's: the language model's layer j takes the
        # j-th (each DeepStack layer still has the merger at its place in the list).
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None)
            if i in self.deepstack_layers:
                deepstack.append(self.deepstack_merger_list[self.deepstack_layers.index(i)](x))
        return torch.cat([self.merger(x), *deepstack], dim=-1)

    def _position_embeddings(
        self, rows: torch.Tensor, cols: torch.Tensor, blocks_h: int, blocks_w: int
    ) -> torch.Tensor:
        """``[num_patches, hidden]``: the learned grid resized to the image's patch grid
        (bilinear, corners aligned, in fp32), read at each patch's row and column."""
        side, m = self.grid_side, self.merge_size
        table = self.pos_embed.weight.float().t().reshape(1, -1, side, side)
        table = F.interpolate(
            table, size=(blocks_h * m, blocks_w * m), mode="bilinear", align_corners=True
        )
        return table[0][:, rows, cols].t()
