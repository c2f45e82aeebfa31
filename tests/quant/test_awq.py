"""The AWQ search: scaling keeps the function, the search finds the outlier channels, and
the result is clearly more accurate than round-to-nearest."""

from __future__ import annotations

import pytest
import torch

from engine.quant.awq import (
    MAX_LOSS_TOKENS,
    NUM_GRID,
    _linear_errors,
    _sample_sequences,
    apply_scales,
    candidate_scales,
    group_applies,
    search_scales,
)
from engine.quant.clip import CLIP_GRID, MAX_SHRINK, apply_clip, search_clip
from engine.quant.dense import load_dense
from engine.quant.forward import BlockRunner, record_inputs
from engine.quant.layout import LLAMA
from engine.quant.rtn import fake_quantize
from tests.conftest import load_reference
from tests.quant.conftest import GROUP_SIZE, NUM_OUTLIER_CHANNELS, calib_ids


def layer_inputs(reference, ids: torch.Tensor) -> list[torch.Tensor]:
    """The input of every decoder layer of the fp32 reference for ``ids``."""
    inputs = []
    handles = [
        layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        for layer in reference.model.layers
    ]
    with torch.no_grad():
        reference(ids)
    for handle in handles:
        handle.remove()
    return inputs


def relative_layer_errors(reference, quantized, ids: torch.Tensor) -> list[float]:
    """Per layer: ||quantized layer(x) - fp32 layer(x)||^2 / ||fp32 layer(x) - x||^2, for
    the fp32 model's own inputs x (so errors do not compound across layers)."""
    runner = BlockRunner(reference.model.rotary_emb, ids.shape[1], torch.float32, "cpu")
    errors = []
    with torch.no_grad():
        for x, ours, theirs in zip(
            layer_inputs(reference, ids), quantized.model.layers, reference.model.layers
        ):
            expected = runner.outputs(theirs, x)
            got = runner.outputs(ours, x)
            errors.append(float((got - expected).pow(2).sum() / (expected - x).pow(2).sum()))
    return errors


def test_awq_layer_error_is_well_below_rtn(outlier_llama, quantized_factory):
    reference = load_reference(outlier_llama)
    held_out = calib_ids(num_samples=4, seq_len=64, seed=7)
    errors = {
        method: relative_layer_errors(
            reference, load_dense(quantized_factory(outlier_llama, method)), held_out
        )
        for method in ("rtn", "awq")
    }
    for awq, rtn in zip(errors["awq"], errors["rtn"]):
        assert awq < 0.7 * rtn, errors


def test_clipping_helps_awq(outlier_llama, quantized_factory):
    reference = load_reference(outlier_llama)
    held_out = calib_ids(num_samples=4, seq_len=64, seed=7)
    clipped, unclipped = (
        sum(
            relative_layer_errors(
                reference, load_dense(quantized_factory(outlier_llama, clip=c)), held_out
            )
        )
        for c in (True, False)
    )
    assert clipped < unclipped


@pytest.fixture()
def first_layer(outlier_llama):
    """Layer 0 of the fp32 reference, its runner and its recorded group inputs."""
    reference = load_reference(outlier_llama)
    ids = calib_ids(num_samples=4)
    runner = BlockRunner(reference.model.rotary_emb, ids.shape[1], torch.float32, "cpu")
    layer = reference.model.layers[0]
    x = layer_inputs(reference, ids)[0]
    inputs, _ = record_inputs(layer, runner, x, [g.input_of for g in LLAMA.scale_groups])
    return layer, runner, x, inputs


def test_folded_scales_keep_the_layers_function(first_layer):
    layer, runner, x, inputs = first_layer
    with torch.no_grad():
        expected = runner.outputs(layer, x)
        generator = torch.Generator().manual_seed(0)
        for group in LLAMA.scale_groups:
            assert group_applies(layer, group)
            in_features = layer.get_submodule(group.input_of).in_features
            scales = torch.rand(in_features, generator=generator) * 4 + 0.25
            apply_scales(layer, group, scales, inputs[group.input_of])
        torch.testing.assert_close(runner.outputs(layer, x), expected, rtol=1e-4, atol=1e-5)


def test_scale_search_boosts_the_outlier_channels(first_layer):
    layer, runner, _, inputs = first_layer
    group = LLAMA.scale_groups[0]
    scales = search_scales(layer, group, inputs[group.input_of], runner, GROUP_SIZE)
    outliers = layer.input_layernorm.weight.abs().topk(NUM_OUTLIER_CHANNELS).indices
    assert set(scales.topk(NUM_OUTLIER_CHANNELS).indices.tolist()) == set(outliers.tolist())


def test_search_leaves_the_weights_as_they_were(first_layer):
    layer, runner, _, inputs = first_layer
    before = {name: p.clone() for name, p in layer.named_parameters()}
    for group in LLAMA.scale_groups:
        search_scales(layer, group, inputs[group.input_of], runner, GROUP_SIZE)
    for name, param in layer.named_parameters():
        assert torch.equal(param, before[name]), name


def test_o_proj_is_not_scaled_under_grouped_query_attention(tiny_model_factory):
    gqa = load_reference(tiny_model_factory("llama")).model.layers[0]  # 4 query, 2 KV heads
    v_to_o = LLAMA.scale_groups[1]
    assert v_to_o.prev_op == "self_attn.v_proj"
    assert not group_applies(gqa, v_to_o)


def test_clip_search_never_does_worse_than_no_clip(first_layer):
    layer, _, _, inputs = first_layer
    linear = layer.mlp.down_proj
    x = inputs["mlp.down_proj"].reshape(-1, linear.in_features)
    max_abs = search_clip(linear.weight, x, GROUP_SIZE)
    grouped = linear.weight.reshape(*max_abs.shape[:2], -1)
    assert (max_abs <= grouped.abs().amax(-1, keepdim=True)).all()
    original = linear.weight.detach().clone()
    unclipped_error = (x @ (fake_quantize(original, GROUP_SIZE) - original).t()).pow(2).mean()
    apply_clip(linear, max_abs)
    clipped_error = (x @ (fake_quantize(linear.weight, GROUP_SIZE) - original).t()).pow(2).mean()
    assert clipped_error < unclipped_error


@pytest.mark.parametrize("name", ["mlp.down_proj", "self_attn.o_proj"])
def test_clip_search_picks_the_ratio_with_the_least_partial_output_error(first_layer, name):
    """The search computes each group's error from a Gram matrix; AutoAWQ's definition is
    the MSE of the group's partial outputs x_g @ w_g, computed here directly in float64
    for every ratio (x is under NUM_SAMPLE_TOKENS tokens, so the search sees all of it)."""
    layer, _, _, inputs = first_layer
    weight = layer.get_submodule(name).weight.detach()
    x = inputs[name].reshape(-1, weight.shape[1])
    chosen = search_clip(weight, x, GROUP_SIZE)
    grouped = weight.reshape(*chosen.shape[:2], -1)  # [N, groups, G]
    x_groups = x.double().reshape(len(x), *grouped.shape[1:])  # [tokens, groups, G]
    max_abs = grouped.abs().amax(-1, keepdim=True)
    steps = range(int(MAX_SHRINK * CLIP_GRID))
    limits = torch.stack([max_abs * (1 - step / CLIP_GRID) for step in steps])
    errors = []
    for limit in limits:
        clipped = torch.clamp(grouped, -limit, limit).reshape(weight.shape)
        delta = (fake_quantize(clipped, GROUP_SIZE) - weight).double().reshape(grouped.shape)
        errors.append(torch.einsum("tgk,ngk->ntg", x_groups, delta).pow(2).mean(1))
    errors = torch.stack(errors)  # [ratios, N, groups]
    limits = limits[..., 0]
    is_chosen = limits == chosen[None, ..., 0]
    assert is_chosen.any(0).all()
    # Ratios whose errors tie to fp32 rounding may swap; the pick must be as good.
    assert is_chosen.gather(0, errors.argmin(0, keepdim=True)).float().mean() > 0.999
    picked = errors.gather(0, is_chosen.float().argmax(0, keepdim=True))[0]
    torch.testing.assert_close(picked, errors.amin(0), rtol=1e-5, atol=1e-12)


def test_candidates_are_no_scaling_then_autoawqs_normalised_grid():
    generator = torch.Generator().manual_seed(0)
    x_mean, w_mean = torch.rand(2, 64, generator=generator) + 0.01
    candidates = candidate_scales(x_mean, w_mean)
    assert candidates.shape == (NUM_GRID + 1, 64)
    assert torch.equal(candidates[0], torch.ones(64))
    torch.testing.assert_close(candidates.amax(1) * candidates.amin(1), torch.ones(NUM_GRID + 1))
    half = (x_mean.sqrt() / w_mean.sqrt()).clamp(min=1e-4)  # ratio 1/2
    expected = half / (half.max() * half.min()).sqrt()
    torch.testing.assert_close(candidates[1 + NUM_GRID // 2], expected, rtol=1e-3, atol=1e-4)


def test_loss_sample_is_evenly_spaced_whole_sequences():
    seq_len = 512
    x = torch.arange(4 * MAX_LOSS_TOKENS // seq_len, dtype=torch.float32)[:, None, None]
    sample = _sample_sequences(x.expand(-1, seq_len, 3))
    assert sample.shape == (MAX_LOSS_TOKENS // seq_len, seq_len, 3)
    first = sample[:, 0, 0]
    assert torch.equal(first, torch.arange(len(first)) * 4.0)
    assert torch.equal(sample, first[:, None, None].expand(-1, seq_len, 3))


@pytest.mark.parametrize("tokens", ["fewer", "more"])
def test_linear_errors_are_the_output_errors(first_layer, tokens):
    """Computed from the outputs with fewer tokens than in-features, from the Gram matrix
    with more: both must be the plain output MSE."""
    layer, _, _, inputs = first_layer
    weight, x = layer.mlp.down_proj.weight, inputs["mlp.down_proj"]
    flat = x.reshape(-1, x.shape[-1])
    fewer = flat[: weight.shape[1] // 2]
    x = fewer if tokens == "fewer" else torch.cat([flat] * (weight.shape[1] // len(flat) + 1))
    candidates = candidate_scales(x.abs().mean(0), weight.abs().mean(0))
    errors = _linear_errors(weight, x, candidates, GROUP_SIZE)
    for scales, error in zip(candidates, errors):
        effective = fake_quantize(weight * scales, GROUP_SIZE) / scales
        direct = (x @ (effective - weight).t()).pow(2).mean()
        torch.testing.assert_close(error, direct, rtol=1e-3, atol=0)
