"""AWQ's clip search: per quantization group, the max |w| to clip to before rounding.

Clipping a group's few largest weights shrinks its step, so every other weight rounds
more finely; the search picks, per output channel and group, the shrink ratio whose
partial outputs ``x_g @ w_g`` on sample tokens are closest to the unclipped float ones.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.quant.rtn import fake_quantize

CLIP_GRID = 20
MAX_SHRINK = 0.5  # ratios 1, 0.95, ..., 0.55 of max |w|
NUM_SAMPLE_TOKENS = 512
# Elements of one batch of output channels' weights (16 MiB in fp32), of which the
# search holds a few copies at once.
MAX_BATCH_ELEMENTS = 1 << 22


@torch.no_grad()
def search_clip(weight: torch.Tensor, x: torch.Tensor, group_size: int) -> torch.Tensor:
    """The best max |w| per output channel and input group, [N, K/G, 1] in fp32, for a
    linear weight [N, K] whose input is ``x`` [..., K]."""
    out_features, in_features = weight.shape
    num_groups = in_features // group_size
    x = _sample_tokens(x.reshape(-1, in_features)).float()
    x = x.reshape(x.shape[0], num_groups, group_size)  # [tokens, groups, group_size]
    # A group's partial-output MSE for a weight change d is mean_t (x_g . d)^2 = d G_g d
    # with G_g = x_g^T x_g / tokens: G*G per weight instead of the outputs' tokens (512)
    # per weight and the elementwise work on [N, tokens, groups] (3x faster on 2 cores).
    gram = torch.einsum("tgi,tgj->gij", x, x) / x.shape[0]  # [groups, G, G]
    w = weight.float().reshape(out_features, num_groups, group_size)
    batch = max(1, MAX_BATCH_ELEMENTS // in_features)
    return torch.cat([_search_batch(w_b, gram, group_size) for w_b in w.split(batch)])


def _sample_tokens(x: torch.Tensor) -> torch.Tensor:
    """NUM_SAMPLE_TOKENS tokens of ``x`` [tokens, K], drawn at random (seeded). Not
    AutoAWQ's stride of tokens // 512: with 128 x 512 calibration tokens that stride is
    128, so a quarter of its sample are the windows' first tokens (attention sinks,
    unlike every other token)."""
    if x.shape[0] <= NUM_SAMPLE_TOKENS:
        return x
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randperm(x.shape[0], generator=generator)[:NUM_SAMPLE_TOKENS]
    return x[chosen.to(x.device)]


def _search_batch(w: torch.Tensor, gram: torch.Tensor, group_size: int) -> torch.Tensor:
    """``search_clip`` for a batch of output channels, ``w`` [n, groups, group_size]."""
    max_abs = w.abs().amax(dim=-1, keepdim=True)  # [n, groups, 1]
    best_max = max_abs.clone()
    best_error = torch.full_like(max_abs, float("inf"))
    for step in range(int(MAX_SHRINK * CLIP_GRID)):
        limit = max_abs * (1 - step / CLIP_GRID)
        clipped = torch.clamp(w, -limit, limit).reshape(w.shape[0], -1)
        quantized = fake_quantize(clipped, group_size).reshape(w.shape)
        delta = (quantized - w).transpose(0, 1)  # [groups, n, group_size]
        error = ((delta @ gram) * delta).sum(-1).t()[..., None]  # [n, groups, 1]
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_max = torch.where(better, limit, best_max)
    return best_max


@torch.no_grad()
def apply_clip(linear: nn.Linear, max_abs: torch.Tensor) -> None:
    """Clamp ``linear``'s weight, group by group, to ``[-max_abs, max_abs]`` in place."""
    grouped = linear.weight.data.reshape(*max_abs.shape[:2], -1)
    limit = max_abs.to(grouped.dtype)
    grouped.copy_(torch.clamp(grouped, -limit, limit))
