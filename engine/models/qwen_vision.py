"""Qwen2.5-VL's vision tower: a ViT over dynamically sized images with 2-D rotary
embeddings, window attention in most layers (full attention in ``fullatt_block_indexes``)
and a merger that turns each 2x2 block of patches into one language-model token.

Module names follow the Hugging Face checkpoints (``visual.*``), so weights load by name.
Patches arrive as the image processor lays them out (engine/multimodal/qwen_images.py):
``[grid_t, grid_h / m, grid_w / m, m * m, patch_dim]`` for merge size ``m``, so the four
patches of a merged token are consecutive and flattening gives transformers' layout.

Window attention is computed without transformers' reordering of the patches into window
order: attention inside a window does not depend on the order of its patches, so a mask
saying which patches share a window gives the same result over the patches as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from engine.errors import UnsupportedModelError
from engine.layers.norm import RMSNorm

VISION_EPS = 1e-6  # Qwen2.5-VL's vision RMSNorms, fixed in its code rather than its config


class QwenPatchEmbed(nn.Module):
    """A Conv3d whose kernel is its stride and covers a whole patch: one linear map of
    each flattened ``[channels, temporal, patch, patch]`` patch (Qwen3-VL's has a bias)."""

    def __init__(self, config, bias: bool = False):
        super().__init__()
        self.proj = nn.Module()
        shape = (config.hidden_size, config.in_channels, config.temporal_patch_size)
        shape += (config.patch_size, config.patch_size)
        self.proj.weight = nn.Parameter(torch.empty(shape))
        self.proj.bias = nn.Parameter(torch.empty(config.hidden_size)) if bias else None

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # [num_patches, patch_dim]
        weight = self.proj.weight
        return F.linear(patches.to(weight.dtype), weight.view(weight.shape[0], -1), self.proj.bias)


class QwenVisionAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        size = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = size // self.num_heads
        self.qkv = nn.Linear(size, 3 * size)
        self.proj = nn.Linear(size, size)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        num_patches = x.shape[0]
        q, k, v = self.qkv(x).view(num_patches, 3, self.num_heads, self.head_dim).unbind(1)
        positions = torch.arange(num_patches, device=x.device)
        q, k = kernels.rotary_embedding(positions, q.contiguous(), k.contiguous(), cos, sin)
        # [1, num_heads, num_patches, head_dim]
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out[0].transpose(0, 1).reshape(num_patches, -1))


class QwenVisionMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_act != "silu":
            raise UnsupportedModelError(f"vision activation {config.hidden_act!r} is not supported")
        size, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(size, inner)
        self.up_proj = nn.Linear(size, inner)
        self.down_proj = nn.Linear(inner, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class QwenVisionBlock(nn.Module):
    """Pre-norm attention and MLP; ``norm(size)`` makes each norm (Qwen2.5-VL's RMSNorm,
    Qwen3-VL's LayerNorm) and ``mlp`` is the block's own."""

    def __init__(self, config, norm: Callable[[int], nn.Module], mlp: nn.Module):
        super().__init__()
        self.norm1 = norm(config.hidden_size)
        self.attn = QwenVisionAttention(config)
        self.norm2 = norm(config.hidden_size)
        self.mlp = mlp

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


def patch_coordinates(
    blocks_h: int, blocks_w: int, m: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's row and column in the image's patch grid, in the processor's
    block-major order (merged token by merged token, ``m`` x ``m`` patches each)."""
    rows = torch.arange(blocks_h, device=device).view(-1, 1, 1, 1) * m
    rows = rows + torch.arange(m, device=device).view(1, 1, -1, 1)
    cols = torch.arange(blocks_w, device=device).view(1, -1, 1, 1) * m
    cols = cols + torch.arange(m, device=device).view(1, 1, 1, -1)
    shape = (blocks_h, blocks_w, m, m)
    return rows.expand(shape).reshape(-1), cols.expand(shape).reshape(-1)


class PatchRotary:
    """The towers' 2-D rotary: half of each head turns by the patch's row, half by its
    column, at the same frequencies."""

    def __init__(self, config):
        rope = getattr(config, "rope_parameters", None) or {}
        self.theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        self.num_frequencies = config.hidden_size // config.num_heads // 4

    def __call__(self, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per patch cos/sin ``[num_patches, head_dim // 2]``: row angles, then column's."""
        exponents = torch.arange(0, 2 * self.num_frequencies, 2, dtype=torch.float32)
        inv_freq = 1.0 / (self.theta ** (exponents / (2 * self.num_frequencies)))
        inv_freq = inv_freq.to(rows.device)
        freqs = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)
        return freqs.cos().contiguous(), freqs.sin().contiguous()


class QwenPatchMerger(nn.Module):
    """RMSNorm per patch, then each merged token's ``m * m`` patches side by side through
    a two-layer GELU MLP into the language model's width."""

    def __init__(self, config):
        super().__init__()
        self.merged_size = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = RMSNorm(config.hidden_size, VISION_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_size, self.merged_size),
            nn.GELU(),
            nn.Linear(self.merged_size, config.out_hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.merged_size))


class QwenVisionTower(nn.Module):
    """``forward(patches)`` for one still image's patches (the processor's 5-D layout,
    ``grid_t`` 1: video frames would each need their own attention) returns its merged
    tokens' features ``[num_tokens, out_hidden_size]`` in raster order."""

    def __init__(self, config):
        super().__init__()
        self.merge_size = config.spatial_merge_size
        self.patch_size = config.patch_size
        # Window side in merged tokens (112 px windows of 28 px tokens: 4 x 4).
        self.window_tokens = config.window_size // self.merge_size // self.patch_size
        self.full_attention_layers = frozenset(config.fullatt_block_indexes)
        self.rotary = PatchRotary(config)
        self.patch_embed = QwenPatchEmbed(config)
        self.blocks = nn.ModuleList(
            QwenVisionBlock(config, lambda size: RMSNorm(size, VISION_EPS), QwenVisionMLP(config))
            for _ in range(config.depth)
        )
        self.merger = QwenPatchMerger(config)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        grid_t, blocks_h, blocks_w = patches.shape[:3]
        assert grid_t == 1, "the tower encodes still images only"
        rows, cols = patch_coordinates(blocks_h, blocks_w, self.merge_size, patches.device)
        cos, sin = self.rotary(rows, cols)
        window = self._window_mask(rows, cols)
        x = self.patch_embed(patches.flatten(0, 3))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if i in self.full_attention_layers else window)
        return self.merger(x)

    def _window_mask(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``[num_patches, num_patches]``: True where two patches share an attention
        window (windows tile the merged-token grid from the top left; edge ones are
        smaller)."""
        side = self.window_tokens * self.merge_size  # in patches
        window = (rows // side) * (int(cols.max()) // side + 1) + cols // side
        return window[:, None] == window[None, :]
