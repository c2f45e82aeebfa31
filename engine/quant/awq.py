"""Activation-aware weight quantization (Lin et al., MLSys 2024) of one decoder layer.

Weights that meet large activations matter most. For each scale group (linears sharing
one input), search a per-input-channel scale ``s`` over a grid of exponents: scaling a
weight column up before rounding shrinks its relative rounding error, and ``x / s``
(folded into the op that produces x) keeps the layer's function. The grid point whose
quantized block output is closest to the float one wins. Then clip each group of
weights (clip.py). Follows AutoAWQ's choices, so results are comparable with its own.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.quant.block_errors import block_errors
from engine.quant.clip import apply_clip, search_clip
from engine.quant.forward import BlockRunner
from engine.quant.layout import DecoderLayout, ScaleGroup
from engine.quant.rtn import fake_quantize

logger = logging.getLogger(__name__)

NUM_GRID = 20
# Tokens on which a block's (or single linear's) error is measured for each candidate:
# enough to rank them, and a bound on the search's cost whatever the calibration size
# (the MLP block's 21 candidate forwards on this sample are most of a layer's search).
# On SmolLM2-135M (benchmarks/bench_awq.py, 2048 held-out tokens) 2048 ranks them as
# well as 4096, for half the search: AWQ perplexity 17.360 against 17.449 with 8 x 512
# calibration tokens, 17.336 against 17.369 with 16 x 512. A single linear's error on
# all tokens would cost a Gram matrix of tokens * K * K: 3.1 TFLOP for Qwen2.5-0.5B's
# down_proj at 128 x 512 tokens, 70 s a layer on 2 cores.
MAX_LOSS_TOKENS = 2048
# Elements of one batch of candidate weight errors (64 MiB in fp32).
MAX_BATCH_ELEMENTS = 1 << 24


def group_applies(layer: nn.Module, group: ScaleGroup) -> bool:
    """A linear ``prev_op`` absorbs the scales only when its outputs are the group's
    inputs one to one: not v_proj -> o_proj under grouped-query attention."""
    prev = layer.get_submodule(group.prev_op)
    if not isinstance(prev, nn.Linear):
        return True
    return prev.out_features == layer.get_submodule(group.input_of).in_features


def _mean_abs_per_channel(x: torch.Tensor) -> torch.Tensor:
    """``mean |x|`` per input channel in fp32, [in_features], one sample at a time."""
    total = torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
    for sample in x:
        total += sample.abs().float().sum(0)
    return total / (x.numel() // x.shape[-1])


def _mean_relative_weight(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per input channel, the mean of ``|w|`` relative to its quantization group's max."""
    magnitude = weight.abs().float().reshape(-1, group_size)
    relative = magnitude / (magnitude.amax(dim=1, keepdim=True) + 1e-6)
    return relative.reshape(weight.shape).mean(0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor) -> torch.Tensor:
    """AutoAWQ's grid (duo scaling): ``mean|x|^a / (mean|w|^(1-a) + 1e-4)`` for a in
    0, 1/20, ..., 19/20, each normalised by ``sqrt(max * min)``; plus all ones (plain
    RTN), which that grid lacks (its a = 0 is ``1 / mean|w|``), so that the search never
    picks scales worse on its own measure than no scaling. [NUM_GRID + 1, in_features]."""
    ratios = torch.arange(NUM_GRID, dtype=torch.float32, device=x_mean.device)[:, None] / NUM_GRID
    scales = (x_mean.pow(ratios) / (w_mean.pow(1 - ratios) + 1e-4)).clamp(min=1e-4)
    scales = scales / (scales.amax(1, keepdim=True) * scales.amin(1, keepdim=True)).sqrt()
    scales[~torch.isfinite(scales)] = 1
    return torch.cat([torch.ones_like(x_mean)[None], scales])


@torch.no_grad()
def search_scales(
    layer: nn.Module, group: ScaleGroup, x: torch.Tensor, runner: BlockRunner, group_size: int
) -> torch.Tensor:
    """The scales [in_features] (fp32) that minimise the MSE of the ``group.inspect``
    block's output when its linears hold ``Q(W * s) / s``; ``x`` is the group's input.
    The statistics use every token of ``x``; the errors a bounded sample of its
    sequences. The layer's weights are left as they were."""
    linears = [layer.get_submodule(name) for name in group.linears]
    w_mean = _mean_relative_weight(torch.cat([linear.weight for linear in linears]), group_size)
    candidates = candidate_scales(_mean_abs_per_channel(x), w_mean)
    sample = _sample_sequences(x)
    if group.inspect is None:
        errors = _linear_errors(linears[0].weight, sample, candidates, group_size)
    else:
        block = layer.get_submodule(group.inspect)
        names = [name.removeprefix(f"{group.inspect}.") for name in group.linears]
        errors = block_errors(block, names, sample, candidates, runner, group_size)
    # NOTE: a candidate whose group ranges overflow the checkpoint's fp16 quantization
    # scales computes inf/NaN; it cannot be stored, so it must never win.
    errors = torch.where(torch.isfinite(errors), errors, torch.inf)
    best = int(torch.argmin(errors))
    ratio = "none" if best == 0 else f"{(best - 1) / NUM_GRID:.2f}"
    logger.debug("%s: ratio %s, mse %.3g", "+".join(group.linears), ratio, float(errors[best]))
    return candidates[best]


def _sample_sequences(x: torch.Tensor) -> torch.Tensor:
    """Evenly spaced whole sequences of ``x`` [num_samples, seq_len, K], at most
    MAX_LOSS_TOKENS tokens in all (attention needs whole sequences)."""
    keep = max(1, MAX_LOSS_TOKENS // x.shape[1])
    return x[:: -(-x.shape[0] // keep)]


def _linear_errors(
    weight: torch.Tensor, x: torch.Tensor, candidates: torch.Tensor, group_size: int
) -> torch.Tensor:
    """A linear's output MSE over the tokens of ``x`` for each candidate, [num_candidates]:
    ``mean((x D^T)^2)`` with ``D = Q(W * s) / s - W``. With more tokens than in-features it
    is ``sum(D G * D) / (tokens * N)`` for the Gram matrix ``G = x^T x``, which costs N*K*K
    per candidate instead of tokens*N*K; with fewer, the outputs are cheaper. Either way
    the candidates are evaluated in batches of one matmul."""
    flat = x.reshape(-1, x.shape[-1])
    tokens, in_features = flat.shape
    if tokens >= in_features:
        gram = torch.zeros(in_features, in_features, dtype=torch.float32, device=x.device)
        for chunk in flat.split(MAX_LOSS_TOKENS):
            chunk = chunk.float()
            gram += chunk.t() @ chunk
    else:
        flat = flat.float()
    w = weight.float()
    outputs = 0 if tokens >= in_features else tokens * w.shape[0]  # per candidate
    per_batch = max(1, MAX_BATCH_ELEMENTS // (w.numel() + outputs))
    errors = []
    for batch in candidates.split(per_batch):
        delta = torch.cat([fake_quantize(w * s, group_size) / s - w for s in batch])
        if tokens >= in_features:
            squared = ((delta @ gram) * delta).reshape(len(batch), -1).sum(1)
        else:
            squared = (flat @ delta.t()).pow(2).reshape(tokens, len(batch), -1).sum((0, 2))
        errors.append(squared / (tokens * w.shape[0]))
    return torch.cat(errors)


@torch.no_grad()
def apply_scales(
    layer: nn.Module, group: ScaleGroup, scales: torch.Tensor, x: torch.Tensor
) -> None:
    """Multiply the group's weight columns by ``scales`` and fold ``1 / scales`` into
    ``prev_op`` (a norm's weight or a linear's output rows), so the layer computes the
    same function; divide the recorded input ``x`` likewise (in place)."""
    prev = layer.get_submodule(group.prev_op)
    if isinstance(prev, nn.Linear):
        prev.weight.div_(scales[:, None])
    else:
        prev.weight.div_(scales)
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(scales)
    for name in group.linears:
        layer.get_submodule(name).weight.mul_(scales)
    x.div_(scales)


def awq_layer(
    layer: nn.Module,
    layout: DecoderLayout,
    runner: BlockRunner,
    inputs: dict[str, torch.Tensor],
    group_size: int,
    clip: bool,
) -> None:
    """Scale, then clip, the linears of ``layer`` in place (the weights stay float; RTN
    of the result is the AWQ checkpoint). ``inputs`` maps each scale group's ``input_of``
    to the input it saw, [num_samples, seq_len, in_features]; it is modified."""
    groups = [group for group in layout.scale_groups if group_applies(layer, group)]
    # NOTE: every search sees the original weights; all scales are applied afterwards.
    found = [search_scales(layer, g, inputs[g.input_of], runner, group_size) for g in groups]
    for group, scales in zip(groups, found):
        apply_scales(layer, group, scales, inputs[group.input_of])
    if not clip:
        return
    for group in layout.scale_groups:
        for name in group.linears:
            if name in layout.no_clip:
                continue
            linear = layer.get_submodule(name)
            apply_clip(linear, search_clip(linear.weight, inputs[group.input_of], group_size))
