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

    def shard(self, param_name: str, index: int) -> torch.Tensor:
        """The rows of ``param_name`` (weight or bias) that checkpoint layer ``index`` fills."""
        start = sum(self.output_sizes[:index])
        return getattr(self, param_name).data.narrow(0, start, self.output_sizes[index])
