"""The W4A16 AWQ kernel (GEMV and GEMM paths) against its torch twin, and the twin
against engine/quant/pack.py, which owns the AutoAWQ format."""

from __future__ import annotations

import pytest
import torch

from engine.quant.pack import dequantize, quantize_rtn
from kernels import reference
from kernels.awq_gemm import awq_linear
from tests.kernels.conftest import assert_close

# (M, K, N, group size, dtype, bias). M <= 16 takes the split-K GEMV: with K = 160 and
# G = 32 the five K tiles split 2 + 2 + 1. N = 136 and 200 leave a ragged last N tile.
CASES = [
    (1, 128, 64, 32, torch.float16, False),
    (3, 160, 136, 32, torch.float32, True),
    (16, 256, 72, 64, torch.bfloat16, True),
    (17, 128, 200, 64, torch.float16, True),
    (33, 256, 64, 128, torch.bfloat16, False),
    (70, 384, 96, 128, torch.float32, False),
]


def quantized_layer(in_features: int, out_features: int, group_size: int, dtype, device):
    weight = torch.randn(out_features, in_features) / in_features**0.5
    q = quantize_rtn(weight, group_size)
    return q.qweight.to(device), q.qzeros.to(device), q.scales.to(device, dtype)


@pytest.mark.parametrize("num_rows, in_features, out_features, group_size, dtype, bias", CASES)
def test_matches_reference(device, num_rows, in_features, out_features, group_size, dtype, bias):
    torch.manual_seed(num_rows)
    qweight, qzeros, scales = quantized_layer(in_features, out_features, group_size, dtype, device)
    x = torch.randn(num_rows, in_features, device=device).to(dtype)
    b = torch.randn(out_features, device=device).to(dtype) if bias else None
    ours = awq_linear(x, qweight, qzeros, scales, group_size, b)
    assert_close(ours, reference.awq_linear(x, qweight, qzeros, scales, group_size, b))


def test_leading_dims_and_strided_rows(device):
    torch.manual_seed(0)
    qweight, qzeros, scales = quantized_layer(64, 32, 32, torch.float32, device)
    wide = torch.randn(2, 3, 96, device=device)
    x = wide[..., 16:80]  # rows 96 apart, as a slice of a fused output would be
    ours = awq_linear(x, qweight, qzeros, scales, 32)
    assert ours.shape == (2, 3, 32)
    assert_close(ours, reference.awq_linear(x, qweight, qzeros, scales, 32))


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_reference_dequantizes_like_pack(group_size):
    torch.manual_seed(group_size)
    qweight, qzeros, scales = quantized_layer(256, 48, group_size, torch.float32, "cpu")
    x = torch.eye(256)  # the output is then the weight itself, [K, N]
    expected = dequantize(qweight, qzeros, scales, group_size)
    torch.testing.assert_close(
        reference.awq_linear(x, qweight, qzeros, scales, group_size), expected
    )
