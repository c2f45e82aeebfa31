"""The scale search's block errors, many candidates to one forward.

Each candidate is a set of scales for the block's linears (q/k/v of an attention, gate/up
of an MLP). The block runs once over copies of the sample, one copy per candidate stacked
on the batch dimension, while each searched linear is replaced by a ``StackedLinear``
that applies candidate c's weights to copy c. The rest of the block is the model's own
code, unchanged: the real attention (rotary tables, GQA, the causal mask, the biases),
the MLP's activation and down projection. One forward of C candidates costs the
arithmetic of C forwards, but in matmuls C times taller: on a GPU it is the difference
between a few large kernels and hundreds of small ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from engine.quant.forward import BlockRunner
from engine.quant.rtn import fake_quantize

# Rows (candidates x tokens) of one candidate-batched forward. It bounds the forward's
# largest intermediates, the MLP's [rows, intermediate] activations: 16384 rows of a
# 4864-wide MLP (Qwen2.5-0.5B) are 320 MiB in fp32, of which the forward holds about
# four (SmolLM2-135M's peak RSS, 4 x 512 calibration tokens: 1.09 GiB one candidate at a
# time, 1.46 GiB with 8 a forward). That is 8 candidates of the 2048-token loss sample,
# tall enough to keep a GPU busy; on 2 CPU cores batching was 10% faster than one at a time.
MAX_CANDIDATE_ROWS = 16384


class StackedLinear(nn.Module):
    """Stands in for an ``nn.Linear`` while candidates are evaluated: its input's batch is
    ``num_candidates`` equal slices, candidate-major, and slice c meets ``weights[c]``."""

    def __init__(self, weights: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weights = weights  # [num_candidates, out_features, in_features]
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_candidates, out_features, in_features = self.weights.shape
        rows = x.reshape(num_candidates, -1, in_features)
        if self.bias is None:
            out = torch.bmm(rows, self.weights.transpose(1, 2))
        else:
            out = torch.baddbmm(self.bias, rows, self.weights.transpose(1, 2))
        return out.reshape(*x.shape[:-1], out_features)


@contextmanager
def stacked_linears(block: nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Replace each linear named in ``weights`` (relative to ``block``) by a
    ``StackedLinear`` of those candidate weights; put the originals back on exit."""
    originals = {}
    try:
        for name, stacked in weights.items():
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name)
            originals[name] = (parent, child, getattr(parent, child))
            setattr(parent, child, StackedLinear(stacked, originals[name][2].bias))
        yield
    finally:
        for parent, child, original in originals.values():
            setattr(parent, child, original)


@torch.no_grad()
def block_errors(
    block: nn.Module,
    linear_names: list[str],
    x: torch.Tensor,
    candidates: torch.Tensor,
    runner: BlockRunner,
    group_size: int,
) -> torch.Tensor:
    """The MSE of ``block(x)`` (``x`` [num_samples, seq_len, in_features]) against its
    float output when the linears ``linear_names`` (relative to ``block``) hold
    ``Q(W * s) / s``, for each candidate row ``s`` of ``candidates``; [num_candidates]
    in fp32. The block's weights are left as they were."""
    originals = {name: block.get_submodule(name).weight for name in linear_names}
    chunks = runner.chunks(x)
    references = [runner.call(block, chunk) for chunk in chunks]
    tokens_per_chunk = chunks[0].shape[0] * chunks[0].shape[1]
    per_forward = max(1, MAX_CANDIDATE_ROWS // tokens_per_chunk)
    squared = torch.zeros(len(candidates), dtype=torch.float64)
    for start in range(0, len(candidates), per_forward):
        batch = candidates[start : start + per_forward]
        weights = {
            name: torch.stack([fake_quantize(w * s, group_size) / s for s in batch]).to(w.dtype)
            for name, w in originals.items()
        }
        with stacked_linears(block, weights):
            for chunk, reference in zip(chunks, references):
                copies = chunk.repeat(len(batch), *([1] * (chunk.dim() - 1)))
                out = runner.call(block, copies).reshape(len(batch), *reference.shape)
                diff = out.float() - reference.float()
                squared[start : start + len(batch)] += diff.pow(2).flatten(1).sum(1).cpu()
    return (squared / sum(r.numel() for r in references)).float()
