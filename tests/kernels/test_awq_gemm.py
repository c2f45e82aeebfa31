"""The W4A16 AWQ kernel variants (GEMV, tl.dot GEMM, dequantize + matmul) against their
torch twin, each with SiLU·mul in its epilogue (gated) against the two launches it
replaces, the twin against engine/quant/pack.py (which owns the AutoAWQ format), and the
launch table that picks a variant."""

from __future__ import annotations

import pytest
import torch

from engine.quant.pack import dequantize, quantize_rtn
from kernels import reference
from kernels.activation import silu_and_mul
from kernels.awq_configs import (
    DEFAULT,
    GEMV_LAUNCHES,
    GEMV_MAX_M,
    TABLE,
    AWQLaunch,
    awq_launch_for,
)
from kernels.awq_gemm import awq_linear, awq_linear_silu_mul, awq_linear_with
from tests.kernels.conftest import assert_close

GEMV = AWQLaunch("gemv", block_n=256, block_k=16, num_warps=4, num_stages=1)
DOT = AWQLaunch("dot", block_m=16, block_n=64, block_k=32, num_warps=4, num_stages=2, group_m=2)
DEQUANT = AWQLaunch("dequant_matmul", block_n=256, block_k=32, num_warps=4, num_stages=1)

# (launch, M, K, N, group size, dtype, bias, SMs). Few SMs leave the output tiles alone
# and split K (the atomic workspace path); many SMs split it as far as it goes. N = 264,
# 136 and 200 leave a ragged last N tile; M = 3 and 5 pad the GEMV's rows; the dot cases
# with M > 16 walk several tile rows in GROUP_M order.
CASES = [
    (GEMV, 1, 128, 264, 32, torch.float16, False, 1),
    (GEMV, 1, 256, 256, 128, torch.bfloat16, True, 64),
    (GEMV, 3, 192, 264, 64, torch.float16, True, 8),
    (GEMV, 5, 128, 136, 128, torch.bfloat16, False, 16),
    (GEMV, 8, 128, 256, 32, torch.float32, False, 4),
    (DOT, 1, 128, 64, 32, torch.float16, False, 8),
    (DOT, 3, 160, 136, 32, torch.float32, True, 1),
    (DOT, 16, 256, 72, 64, torch.bfloat16, True, 4),
    (DOT, 40, 128, 200, 64, torch.float16, True, 1),
    (DOT, 70, 128, 96, 128, torch.bfloat16, False, 1),
    (DEQUANT, 33, 256, 64, 128, torch.bfloat16, True, 1),
    (DEQUANT, 17, 128, 264, 32, torch.float16, False, 1),
]


def quantized_layer(in_features: int, out_features: int, group_size: int, dtype, device):
    weight = torch.randn(out_features, in_features) / in_features**0.5
    q = quantize_rtn(weight, group_size)
    return q.qweight.to(device), q.qzeros.to(device), q.scales.to(device, dtype)


@pytest.mark.parametrize(
    "launch, num_rows, in_features, out_features, group_size, dtype, bias, sms", CASES
)
def test_variant_matches_reference(
    device, launch, num_rows, in_features, out_features, group_size, dtype, bias, sms
):
    torch.manual_seed(num_rows)
    qweight, qzeros, scales = quantized_layer(in_features, out_features, group_size, dtype, device)
    x = torch.randn(num_rows, in_features, device=device).to(dtype)
    b = torch.randn(out_features, device=device).to(dtype) if bias else None
    expected = reference.awq_linear(x, qweight, qzeros, scales, group_size, b)
    launch = AWQLaunch(**{**launch.__dict__, "block_k": min(launch.block_k, group_size)})
    for _ in range(2):  # the second call finds the split-K workspace zeroed again
        ours = awq_linear_with(x, qweight, qzeros, scales, group_size, b, launch, sms)
        assert_close(ours, expected)


@pytest.mark.parametrize(
    "launch, num_rows",
    [*((launch, rows) for rows, launch in GEMV_LAUNCHES.items()), (GEMV, 3), (DOT, 5)],
)
# Not bf16: the interpreter truncates fp32 to bf16 where a GPU rounds to nearest.
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_exact_inputs_give_the_reference_bits(device, launch, num_rows, dtype):
    """Every nibble and zero, with small integer activations and power-of-two scales:
    each product and sum is exact in fp32 (the kernels' biased floats included), so any
    misplaced nibble, zero or scale shows as a different bit. Every launch the GEMV
    table holds runs, with a ragged last column tile and K split across programs."""
    torch.manual_seed(num_rows)
    group_size, in_features, out_features = 32, 128, 520
    qweight = torch.randint(-(2**31), 2**31 - 1, (in_features, out_features // 8))
    qzeros = torch.randint(-(2**31), 2**31 - 1, (in_features // group_size, out_features // 8))
    scales = 2.0 ** -torch.randint(0, 4, (in_features // group_size, out_features))
    x = torch.randint(-4, 5, (num_rows, in_features)).to(device, dtype)
    weights = (qweight.int().to(device), qzeros.int().to(device), scales.to(device, dtype))
    expected = reference.awq_linear(x, *weights, group_size)
    launch = AWQLaunch(**{**launch.__dict__, "block_k": min(launch.block_k, group_size)})
    assert torch.equal(awq_linear_with(x, *weights, group_size, None, launch, 4), expected)


# (launch, M, K, I: each half's width, group size, dtype, SMs). I = 136 and 200 leave the
# last tile's halves ragged; few SMs split K (the workspace path), M = 3 pads the GEMV.
GATED_CASES = [
    (GEMV, 1, 128, 136, 32, torch.float16, 1),
    (GEMV, 3, 192, 256, 64, torch.bfloat16, 8),
    (GEMV, 8, 128, 200, 32, torch.float32, 64),
    (DOT, 1, 128, 96, 32, torch.float16, 2),
    (DOT, 20, 256, 136, 128, torch.bfloat16, 1),
    (DOT, 40, 128, 64, 64, torch.float32, 8),
    (DEQUANT, 17, 128, 72, 32, torch.float16, 1),
]


@pytest.mark.parametrize(
    "launch, num_rows, in_features, width, group_size, dtype, sms", GATED_CASES
)
def test_gated_is_the_two_launches_it_replaces(
    device, launch, num_rows, in_features, width, group_size, dtype, sms
):
    """Over a gate | up weight, SiLU·mul in the epilogue gives what the launch without
    it followed by the SiLU kernel stores, to the bit (gate and up rounded as stored)."""
    torch.manual_seed(num_rows)
    qweight, qzeros, scales = quantized_layer(in_features, 2 * width, group_size, dtype, device)
    x = torch.randn(num_rows, in_features, device=device).to(dtype)
    weights = (qweight, qzeros, scales, group_size, None)
    launch = AWQLaunch(**{**launch.__dict__, "block_k": min(launch.block_k, group_size)})
    expected = silu_and_mul(awq_linear_with(x, *weights, launch, sms))
    for _ in range(2):  # the second call finds the split-K workspace zeroed again
        ours = awq_linear_with(x, *weights, launch, sms, gated=True)
        assert ours.shape == (num_rows, width)
        assert torch.equal(ours, expected)
    assert_close(ours, reference.awq_linear_silu_mul(x, *weights))


@pytest.mark.parametrize("num_rows", [1, GEMV_MAX_M + 1])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_silu_mul_takes_the_table_and_any_bias(device, num_rows, bias):
    """The dispatcher's launch comes from the table (GEMV, then dot); with a bias, which
    the gated epilogue does not add, it runs the SiLU kernel after the linear."""
    torch.manual_seed(0)
    qweight, qzeros, scales = quantized_layer(64, 256, 32, torch.float16, device)
    x = torch.randn(num_rows, 64, device=device).to(torch.float16)
    b = torch.randn(256, device=device).to(torch.float16) if bias else None
    expected = reference.awq_linear_silu_mul(x, qweight, qzeros, scales, 32, b)
    assert_close(awq_linear_silu_mul(x, qweight, qzeros, scales, 32, b), expected)


def test_leading_dims_and_strided_rows(device):
    torch.manual_seed(0)
    qweight, qzeros, scales = quantized_layer(64, 32, 32, torch.float32, device)
    wide = torch.randn(2, 3, 96, device=device)
    x = wide[..., 16:80]  # rows 96 apart, as a slice of a fused output would be
    ours = awq_linear(x, qweight, qzeros, scales, 32)
    assert ours.shape == (2, 3, 32)
    assert_close(ours, reference.awq_linear(x, qweight, qzeros, scales, 32))


def test_table_takes_the_gemv_at_one_row_and_never_past_its_limit():
    for arch in (None, 87, 90, 75):  # 75: a GPU the table does not know takes the defaults
        assert awq_launch_for(arch, 1, 128).variant == "gemv"
        assert awq_launch_for(arch, GEMV_MAX_M + 1, 128).variant == "dot"
        assert awq_launch_for(arch, 100_000, 128) == awq_launch_for(arch, 1 << 30, 128)
    assert awq_launch_for(90, 1, 32).block_k <= 32  # a K tile never straddles a group
    for buckets in (DEFAULT, *TABLE.values()):
        bounds = [max_rows for max_rows, _ in buckets]
        assert bounds == sorted(bounds)
        large = [launch for max_rows, launch in buckets if max_rows > GEMV_MAX_M]
        assert all(launch.variant != "gemv" for launch in large)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_reference_dequantizes_like_pack(group_size):
    torch.manual_seed(group_size)
    qweight, qzeros, scales = quantized_layer(256, 48, group_size, torch.float32, "cpu")
    x = torch.eye(256)  # the output is then the weight itself, [K, N]
    expected = dequantize(qweight, qzeros, scales, group_size)
    torch.testing.assert_close(
        reference.awq_linear(x, qweight, qzeros, scales, group_size), expected
    )
