"""Linear layers. Checkpoints store q/k/v and gate/up as separate matrices; we fuse each
group into one matmul at load time (fewer, larger GEMMs: what decode speed needs)."""

from __future__ import annotations

import torch
from torch import nn


class MergedLinear(nn.Linear):
    """One linear layer whose output rows are the concatenation of several checkpoint
    layers (``output_sizes`` in order, e.g. q, k, v)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool):
        super().__init__(in_features, sum(output_sizes), bias=bias)
        self.output_sizes = output_sizes

    def load_shard(self, param_name: str, index: int, tensor: torch.Tensor) -> None:
        start = sum(self.output_sizes[:index])
        target = getattr(self, param_name).data.narrow(0, start, self.output_sizes[index])
        if target.shape != tensor.shape:
            raise ValueError(f"expected shape {tuple(target.shape)}, got {tuple(tensor.shape)}")
        target.copy_(tensor)
