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

from engine.quant.clip import apply_clip, search_clip
from engine.quant.forward import BlockRunner
from engine.quant.layout import DecoderLayout, ScaleGroup
from engine.quant.rtn import fake_quantize

logger = logging.getLogger(__name__)

NUM_GRID = 20


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


@torch.no_grad()
def search_scales(
    layer: nn.Module, group: ScaleGroup, x: torch.Tensor, runner: BlockRunner, group_size: int
) -> torch.Tensor:
    """The scales [in_features] (fp32) that minimise the MSE of the ``group.inspect``
    block's output when its linears hold ``Q(W * s) / s``; ``x`` is the group's input.
    The layer's weights are left as they were."""
    linears = [layer.get_submodule(name) for name in group.linears]
    block = layer.get_submodule(group.inspect or group.input_of)
    w_mean = _mean_relative_weight(torch.cat([linear.weight for linear in linears]), group_size)
    x_mean = _mean_abs_per_channel(x)
    reference = runner.outputs(block, x)
    originals = [linear.weight.data for linear in linears]
    best_error, best_ratio, best_scales = float("inf"), -1.0, torch.ones_like(x_mean)
    try:
        for step in range(NUM_GRID):
            ratio = step / NUM_GRID
            scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
            scales = scales / (scales.max() * scales.min()).sqrt()
            scales[~torch.isfinite(scales)] = 1
            for linear, original in zip(linears, originals):
                quantized = fake_quantize(original * scales, group_size) / scales
                linear.weight.data = quantized.to(original.dtype)
            error = runner.mean_squared_error(block, x, reference)
            if error < best_error:
                best_error, best_ratio, best_scales = error, ratio, scales
    finally:
        for linear, original in zip(linears, originals):
            linear.weight.data = original
    logger.debug("%s: ratio %.2f, mse %.3g", "+".join(group.linears), best_ratio, best_error)
    return best_scales


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
