"""torch's CPU int4/int8 weight-only kernels (kernels/cpu_linear.py) against their twins:
the same activations times the dequantized weight in fp32."""

from __future__ import annotations

import pytest
import torch

from kernels import cpu_linear

# (atol, rtol) for outputs of magnitude ~1: fp32 sums in another order; bf16 rounds the
# activations' products and, for int4, each group's offset (8 - z) * s once more.
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2)}


def awq_like_int4(out_features: int, in_features: int, group_size: int, seed: int = 0):
    """Codes [N, K], zeros and scales [K/G, N] as an AWQ checkpoint holds them (fp16
    scales, so ``(q - z) * s`` is exact in fp32), sized for outputs of magnitude ~1."""
    generator = torch.Generator().manual_seed(seed)
    num_groups = in_features // group_size
    codes = torch.randint(0, 16, (out_features, in_features), generator=generator)
    zeros = torch.randint(0, 16, (num_groups, out_features), generator=generator)
    scales = torch.rand(num_groups, out_features, generator=generator) + 0.5
    scales = (scales / (4 * in_features**0.5)).half().float()
    return codes, zeros, scales


def test_int4_offsets_follow_torchs_convention():
    """An identity batch reads the weight back: torch's ``(q - 8) * s + m`` with
    ``m = (8 - z) * s`` is AWQ's ``(q - z) * s`` exactly, for every code and zero."""
    in_features, out_features, group_size = 64, 32, 32
    codes, zeros, scales = awq_like_int4(out_features, in_features, group_size)
    codes[:, :16] = torch.arange(16)  # every code meets several zeros
    packed, scales_and_zeros = cpu_linear.pack_int4(codes, zeros, scales, group_size, torch.float32)
    read_back = cpu_linear.int4_linear(
        torch.eye(in_features), packed, scales_and_zeros, group_size
    )  # [K, N]: row k is w[:, k]
    z = zeros.repeat_interleave(group_size, dim=0)
    s = scales.repeat_interleave(group_size, dim=0)
    assert torch.equal(read_back, (codes.t() - z).float() * s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("out_features, num_groups", [(16, 1), (48, 3), (80, 2)])
@pytest.mark.parametrize("has_bias", [False, True])
def test_int4_linear_matches_dequantized_matmul(
    dtype, group_size, out_features, num_groups, has_bias
):
    in_features = group_size * num_groups
    codes, zeros, scales = awq_like_int4(out_features, in_features, group_size)
    packed, scales_and_zeros = cpu_linear.pack_int4(codes, zeros, scales, group_size, dtype)
    bias = torch.randn(out_features).to(dtype) if has_bias else None
    for num_rows in (1, 5):
        x = torch.randn(num_rows, in_features).to(dtype)
        ours = cpu_linear.int4_linear(x, packed, scales_and_zeros, group_size, bias)
        theirs = cpu_linear.int4_linear_reference(
            x, codes, zeros, scales.to(dtype), group_size, bias
        )
        atol, rtol = TOLERANCES[dtype]
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=rtol)


def test_fp32_activations_run_in_the_dtype_the_weights_were_packed_in():
    """bf16-packed weights (the fast kernels) take fp32 activations: rounded to bf16 in,
    the result fp32 out."""
    torch.manual_seed(0)
    codes, zeros, scales = awq_like_int4(48, 128, 64)
    packed, scales_and_zeros = cpu_linear.pack_int4(codes, zeros, scales, 64, torch.bfloat16)
    weight8, scales8 = cpu_linear.quantize_int8(torch.randn(48, 128) / 12, torch.bfloat16)
    bias = torch.randn(48)
    x = torch.randn(3, 128)
    ours = cpu_linear.int4_linear(x, packed, scales_and_zeros, 64, bias)
    theirs = cpu_linear.int4_linear_reference(
        x.bfloat16(), codes, zeros, scales.bfloat16(), 64, bias.bfloat16()
    )
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs.float(), atol=3e-2, rtol=3e-2)
    ours = cpu_linear.int8_linear(x, weight8, scales8, bias)
    theirs = cpu_linear.int8_linear_reference(x.bfloat16(), weight8, scales8, bias.bfloat16())
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs.float(), atol=3e-2, rtol=3e-2)


def test_int4_linear_keeps_leading_dims_and_takes_no_rows():
    codes, zeros, scales = awq_like_int4(32, 64, 32)
    packed, scales_and_zeros = cpu_linear.pack_int4(codes, zeros, scales, 32, torch.float32)
    x = torch.randn(2, 3, 64)
    ours = cpu_linear.int4_linear(x, packed, scales_and_zeros, 32)
    theirs = cpu_linear.int4_linear_reference(x, codes, zeros, scales, 32)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    empty = cpu_linear.int4_linear(torch.empty(0, 64), packed, scales_and_zeros, 32)
    assert empty.shape == (0, 32)


@pytest.mark.parametrize(
    "in_features, out_features, group_size, message",
    [
        (64, 32, 16, "group size 16 is not supported"),
        (96, 32, 64, "does not divide 96 in-features"),
        (64, 24, 32, "24 out-features is not a multiple of 16"),
    ],
)
def test_int4_bad_shapes_are_refused_with_the_reason(
    in_features, out_features, group_size, message
):
    codes = torch.zeros(out_features, in_features, dtype=torch.int32)
    groups = max(1, in_features // group_size)
    zeros = scales = torch.zeros(groups, out_features)
    with pytest.raises(ValueError, match=message):
        cpu_linear.pack_int4(codes, zeros, scales, group_size, torch.float32)


def test_int4_mismatched_scales_are_refused():
    codes, zeros, scales = awq_like_int4(32, 64, 32)
    with pytest.raises(ValueError, match=r"must both be \(2, 32\)"):
        cpu_linear.pack_int4(codes, zeros.t(), scales, 32, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out_features, in_features", [(7, 48), (33, 208), (64, 64)])
@pytest.mark.parametrize("has_bias", [False, True])
def test_int8_linear_matches_dequantized_matmul(dtype, out_features, in_features, has_bias):
    torch.manual_seed(0)
    weight, scales = cpu_linear.quantize_int8(
        torch.randn(out_features, in_features) / in_features**0.5, dtype
    )
    bias = torch.randn(out_features).to(dtype) if has_bias else None
    for num_rows in (1, 5):
        x = torch.randn(num_rows, in_features).to(dtype)
        ours = cpu_linear.int8_linear(x, weight, scales, bias)
        theirs = cpu_linear.int8_linear_reference(x, weight, scales, bias)
        atol, rtol = TOLERANCES[dtype]
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_int8_rounds_to_the_nearest_step_of_the_stored_scale(dtype):
    torch.manual_seed(0)
    dense = torch.randn(9, 40)
    dense[3] = 0  # an all-zero row gets a tiny scale, not a division by zero
    weight, scales = cpu_linear.quantize_int8(dense, dtype)
    assert weight.dtype == torch.int8 and scales.dtype == dtype and scales.shape == (9,)
    assert weight.abs().amax(dim=1)[[0, 1, 2, 4]].eq(127).all()
    step = scales.float()[:, None]
    error = (weight.float() * step - dense).abs()
    assert (error <= step / 2 + 1e-6).all()
    assert weight[3].eq(0).all()


def test_int8_rows_dequantize_only_what_is_read():
    torch.manual_seed(0)
    weight, scales = cpu_linear.quantize_int8(torch.randn(50, 16), torch.float32)
    ids = torch.tensor([[3, 0], [49, 3]])
    rows = cpu_linear.int8_rows(ids, weight, scales, torch.bfloat16)
    table = (weight.float() * scales[:, None]).to(torch.bfloat16)
    assert rows.shape == (2, 2, 16) and torch.equal(rows, table[ids])


def test_int8_bad_in_features_are_refused():
    for in_features in (13, 24):  # 24: torch's bf16 kernel segfaults on AVX-512
        with pytest.raises(ValueError, match=f"{in_features} in-features is not a multiple of 16"):
            cpu_linear.check_int8_shape(in_features)


def test_quantize_int8_in_row_chunks_equals_the_whole_table_at_once():
    torch.manual_seed(0)
    dense = torch.randn(cpu_linear.INT8_CHUNK_ROWS + 5, 16)
    weight, scales = cpu_linear.quantize_int8(dense, torch.bfloat16)
    whole = (dense.abs().amax(dim=1) / 127).to(torch.bfloat16)
    assert torch.equal(scales, whole)
    assert torch.equal(weight, torch.round(dense / whole.float()[:, None]).to(torch.int8))
