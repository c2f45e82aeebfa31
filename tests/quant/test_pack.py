"""The AutoAWQ GEMM int4 layout: exact packing and round-to-nearest quantization."""

from __future__ import annotations

import pytest
import torch

from engine.quant.pack import dequantize, pack_int4, quantize_rtn, unpack_int4


def test_pack_unpack_round_trip():
    values = torch.randint(0, 16, (32, 64), dtype=torch.int32)
    packed = pack_int4(values)
    assert packed.shape == (32, 8) and packed.dtype == torch.int32
    assert torch.equal(unpack_int4(packed), values)


def test_nibble_order_is_autoawqs():
    # Column 8c + [0, 2, 4, 6, 1, 3, 5, 7][i] lives in nibble i: put value j+1 in column j.
    values = torch.arange(1, 9, dtype=torch.int32)[None, :]
    packed = int(pack_int4(values)[0, 0]) & 0xFFFFFFFF
    nibbles = [(packed >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles == [1, 3, 5, 7, 2, 4, 6, 8]


def test_high_nibble_sets_the_sign_bit():
    values = torch.full((1, 8), 15, dtype=torch.int32)
    assert int(pack_int4(values)[0, 0]) == -1


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_rtn_error_is_within_half_a_step(group_size):
    torch.manual_seed(0)
    weight = torch.randn(48, 256)
    quantized = quantize_rtn(weight, group_size)
    assert quantized.qweight.shape == (256, 6)
    assert quantized.qzeros.shape == (256 // group_size, 6)
    assert quantized.scales.shape == (256 // group_size, 48)
    assert quantized.scales.dtype == torch.float16
    restored = dequantize(quantized.qweight, quantized.qzeros, quantized.scales.float(), group_size)
    step = quantized.scales.float().repeat_interleave(group_size, 0)
    error = (restored - weight.t()).abs()
    assert (error <= step * 0.5 + 1e-3).all()


def test_group_size_must_divide_in_features():
    with pytest.raises(ValueError, match="group size"):
        quantize_rtn(torch.randn(8, 100), 64)
