"""The candidate-batched block errors equal the one-candidate-at-a-time loop: the same
errors within fp32 rounding, the same winner, over several candidate batches and sample
chunks, for multi-head and grouped-query attention (with Qwen2's q/k/v biases) and the MLP."""

from __future__ import annotations

import pytest
import torch

from engine.quant import block_errors as block_errors_module
from engine.quant.awq import candidate_scales
from engine.quant.block_errors import block_errors
from engine.quant.forward import BlockRunner
from engine.quant.layout import LLAMA
from engine.quant.rtn import fake_quantize
from tests.conftest import load_reference
from tests.quant.conftest import GROUP_SIZE, build_outlier_model, calib_ids


def one_by_one_errors(block, names, x, candidates, runner) -> torch.Tensor:
    """The reference: for each candidate, the linears' weights replaced by
    ``Q(W * s) / s``, the block run over ``x``, the MSE against the float output."""
    linears = [block.get_submodule(name) for name in names]
    originals = [linear.weight.data for linear in linears]
    expected = runner.outputs(block, x)
    errors = []
    for scales in candidates:
        for linear, original in zip(linears, originals):
            linear.weight.data = fake_quantize(original * scales, GROUP_SIZE) / scales
        errors.append(float((runner.outputs(block, x) - expected).pow(2).mean()))
    for linear, original in zip(linears, originals):
        linear.weight.data = original
    return torch.tensor(errors)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def second_layer(request, tmp_path_factory):
    """Layer 1 of an outlier model (llama: 4/4 heads; qwen2: 4/2 heads, q/k/v biases),
    its input, and a runner whose chunks hold 3 of the 8 samples (so the last is short)."""
    arch = request.param
    heads = dict(num_key_value_heads=2) if arch == "qwen2" else {}
    model_dir = build_outlier_model(tmp_path_factory.mktemp(arch), arch, **heads)
    model = load_reference(model_dir)
    ids = calib_ids(num_samples=8, seq_len=32)
    captured = []
    model.model.layers[1].register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    with torch.no_grad():
        model(ids)
    runner = BlockRunner(model.model.rotary_emb, ids.shape[1], torch.float32, "cpu")
    runner.samples_per_chunk = 3
    return model.model.layers[1], captured[0], runner


@pytest.mark.parametrize("group", [LLAMA.scale_groups[0], LLAMA.scale_groups[2]])
def test_batched_block_errors_equal_the_one_by_one_loop(second_layer, group, monkeypatch):
    layer, x, runner = second_layer
    # 2 candidates of a 3-sample chunk per forward: 11 forwards for the 21 candidates.
    monkeypatch.setattr(block_errors_module, "MAX_CANDIDATE_ROWS", 2 * 3 * x.shape[1])
    with torch.no_grad():
        norm = layer.get_submodule(group.prev_op)
        block_input = norm(x)
        weight = torch.cat([layer.get_submodule(name).weight for name in group.linears])
        candidates = candidate_scales(block_input.abs().mean((0, 1)), weight.abs().mean(0))
        block = layer.get_submodule(group.inspect)
        names = [name.removeprefix(f"{group.inspect}.") for name in group.linears]
        before = {name: p.clone() for name, p in block.named_parameters()}

        batched = block_errors(block, names, block_input, candidates, runner, GROUP_SIZE)
        for name, param in block.named_parameters():
            assert torch.equal(param, before[name]), name
        expected = one_by_one_errors(block, names, block_input, candidates, runner)

    assert batched.dtype == torch.float32 and batched.shape == (len(candidates),)
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=0)
    assert int(batched.argmin()) == int(expected.argmin())
    # The candidates differ by far more than rounding, so the comparison is not vacuous.
    assert float(expected.max() / expected.min()) > 1.5
