"""The native CPU kernels (kernels/cpu_quant_gemm.c through kernels/cpu_native.py) against
their twins: the activations quantized by ``quantize_activations`` times the dequantized
weight, in fp32. Both the code path this CPU compiles (``-march=native``: AVX-512 VNNI,
AVX2 with or without VNNI, or Arm's dot products) and the portable C path are held to
them; ``make native-check`` builds the other paths."""

from __future__ import annotations

import platform

import pytest
import torch

from engine.layers.awq_linear import AWQLinear
from engine.layers.cpu_quant import Int4Linear, native_kernels
from engine.quant.pack import pack_int4
from kernels import cpu_linear, cpu_native
from tests.kernels.test_cpu_linear import awq_like_int4

# Only the order of fp32 sums differs from the twin (per 32-block, then per group).
TWIN_TOLERANCE = dict(atol=1e-5, rtol=1e-5)
# Against unquantized fp32 activations: the int8 rounding, measured 0.2-1.0% of the
# largest output on these random layers.
FP32_RELATIVE_ERROR = 0.02
PORTABLE_FLAG = "-march=armv8-a" if platform.machine() in ("aarch64", "arm64") else "-march=x86-64"


@pytest.fixture(scope="module", params=["native", "portable"])
def kernels(request, tmp_path_factory) -> cpu_native.NativeKernels:
    if request.param == "native":
        built = native_kernels()
        assert built is not None, "the native CPU kernels did not build (see the warning)"
        return built
    built = cpu_native.load(tmp_path_factory.mktemp("portable"), PORTABLE_FLAG)
    assert built.simd == "portable"
    return built


@pytest.fixture(params=[1, 2])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("block", [32, 64, 128])
def test_quantized_activations_equal_the_torch_twin(kernels, block):
    x = torch.randn(5, 256) * torch.logspace(-3, 3, 256)
    x[1, :128] = 0  # a block of zeros: scale 0, codes 0
    x[2, 128:256] = 0.5
    x[3, :4] = torch.tensor([127.0, 2.5, 3.5, -2.5])  # scale 1: ties round half to even
    quantized = kernels.quantize(x, block)
    assert quantized.scales.shape == (5, 256 // block)
    values = quantized.codes.float().reshape(5, -1, block) * quantized.scales[..., None]
    assert torch.equal(values.reshape(5, 256), cpu_linear.quantize_activations(x, block))
    code_sums = quantized.codes.float().reshape(5, -1, block).sum(-1)  # exact: integers
    assert torch.equal(quantized.scaled_sums, quantized.scales * code_sums)
    assert int(quantized.codes.abs().max()) == 127
    assert quantized.codes[3, :4].tolist() == [127, 2, 4, -2]


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("out_features", [4, 37, 130])  # whole tiles of 4, and padded ones
@pytest.mark.parametrize("num_rows", [1, 3, 17])
def test_int4_matches_the_twin(kernels, threads, group_size, out_features, num_rows):
    in_features = 2 * group_size if group_size < 256 else 256
    codes, zeros, scales = awq_like_int4(out_features, in_features, group_size)
    packed = cpu_linear.pack_int4_native(codes, zeros, scales, group_size)
    generator = torch.Generator().manual_seed(group_size + out_features + num_rows)
    bias = torch.randn(out_features, generator=generator)
    x = torch.randn(num_rows, in_features, generator=generator)
    ours = cpu_linear.native_int4_linear(kernels, x, *packed, group_size, out_features, bias)
    block = cpu_linear.activation_block(group_size)
    twin = cpu_linear.int4_linear_reference(
        cpu_linear.quantize_activations(x, block), codes, zeros, scales, group_size, bias
    )
    torch.testing.assert_close(ours, twin, **TWIN_TOLERANCE)
    exact = cpu_linear.int4_linear_reference(x, codes, zeros, scales, group_size, bias)
    assert (ours - exact).abs().max() < FP32_RELATIVE_ERROR * exact.abs().max()


@pytest.mark.parametrize("in_features", [160, 192, 256])  # activations in 32s, 64s, 128s
@pytest.mark.parametrize("out_features", [4, 37])
@pytest.mark.parametrize("num_rows", [1, 3, 17])
def test_int8_matches_the_twin(kernels, threads, in_features, out_features, num_rows):
    generator = torch.Generator().manual_seed(out_features + num_rows)
    dense = torch.randn(out_features, in_features, generator=generator) / 12
    weight, scales = cpu_linear.quantize_int8(dense, cpu_linear.INT8_ACTIVATIONS)
    assert scales.dtype == torch.float32
    rows, _ = cpu_linear.quantize_int8(dense, torch.float32)
    assert torch.equal(cpu_linear.untile_int8_rows(weight), rows)
    x = torch.randn(num_rows, in_features, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    ours = cpu_linear.native_int8_linear(kernels, x, weight, scales, bias)
    block = cpu_linear.activation_block(in_features)
    twin = cpu_linear.int8_linear_reference(
        cpu_linear.quantize_activations(x, block), rows, scales, bias
    )
    torch.testing.assert_close(ours, twin, **TWIN_TOLERANCE)
    exact = cpu_linear.int8_linear_reference(x, rows, scales, bias)
    assert (ours - exact).abs().max() < FP32_RELATIVE_ERROR * exact.abs().max()


@pytest.mark.parametrize("num_rows", [8, 11])  # whole tiles, and 3 rows left as rows
def test_tiled_int8_tables_read_back_row_by_row(num_rows):
    rows = torch.randint(-127, 128, (num_rows, 64), dtype=torch.int8)
    tiled = cpu_linear.tile_int8_rows(rows)
    assert not torch.equal(tiled, rows)
    assert torch.equal(cpu_linear.untile_int8_rows(tiled), rows)
    scales = torch.rand(num_rows)
    ids = torch.tensor([[0, num_rows - 1, 5], [2, 2, num_rows - 3]])
    ours = cpu_linear.int8_rows(ids, tiled, scales, torch.float32, tiled=True)
    assert torch.equal(ours, cpu_linear.int8_rows(ids, rows, scales, torch.float32))


def test_native_linears_keep_leading_dims_dtype_and_take_no_rows(kernels):
    codes, zeros, scales = awq_like_int4(8, 64, 32)
    packed = cpu_linear.pack_int4_native(codes, zeros, scales, 32)
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    bias = torch.randn(8, dtype=torch.bfloat16)  # added after the kernel, in bf16
    out = cpu_linear.native_int4_linear(kernels, x, *packed, 32, 8, bias)
    assert out.shape == (2, 3, 8) and out.dtype == torch.bfloat16
    without = cpu_linear.native_int4_linear(kernels, x, *packed, 32, 8)
    assert torch.equal(out, without + bias)
    empty = cpu_linear.native_int4_linear(kernels, torch.empty(0, 64), *packed, 32, 8)
    assert empty.shape == (0, 8)


def test_an_awq_layer_torch_cannot_pack_runs_natively():
    """AWQ packs out-features by 8, torch's int4 layout by 16; the native tiles of 4 take
    24, and the layer equals its AWQ twin's dequantized weight on quantized activations."""
    codes, zeros, scales = awq_like_int4(24, 64, 32)
    layer = AWQLinear(64, 24, bias=False, group_size=32)
    layer.qweight.copy_(pack_int4(codes.t().contiguous().to(torch.int32)))
    layer.qzeros.copy_(pack_int4(zeros.to(torch.int32)))
    layer.scales.copy_(scales.half())
    native = Int4Linear.from_awq(layer, cpu_linear.INT8_ACTIVATIONS)
    assert native.native is not None
    x = torch.randn(3, 64)
    twin = cpu_linear.int4_linear_reference(
        cpu_linear.quantize_activations(x, 32), codes, zeros, scales, 32
    )
    torch.testing.assert_close(native(x), twin, **TWIN_TOLERANCE)


def test_activations_take_the_largest_block_the_weight_scales_allow():
    assert [cpu_linear.activation_block(n) for n in (32, 64, 96, 128, 256, 576, 896)] == [
        32, 64, 32, 128, 128, 64, 128,
    ]  # fmt: skip


def test_shapes_the_native_kernels_cannot_take_are_refused():
    codes, zeros, scales = awq_like_int4(8, 48, 16)
    with pytest.raises(ValueError, match="multiples of 32"):
        cpu_linear.pack_int4_native(codes, zeros, scales, 16)
    codes, zeros, scales = awq_like_int4(8, 96, 32)
    with pytest.raises(ValueError, match="does not divide 96"):
        cpu_linear.pack_int4_native(codes, zeros[:1], scales[:1], 64)


def test_a_failed_build_says_why_and_a_built_library_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(cpu_native.NativeBuildError, match="cannot run /nonexistent/cc"):
        cpu_native.load(tmp_path)
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    with pytest.raises(cpu_native.NativeBuildError, match="false failed"):
        cpu_native.load(tmp_path)
    assert not list(tmp_path.iterdir())  # no half-written library left behind
    monkeypatch.delenv("CC")
    first = cpu_native.load(tmp_path, PORTABLE_FLAG)
    built_at = first.path.stat().st_mtime_ns
    assert cpu_native.load(tmp_path, PORTABLE_FLAG).path == first.path
    assert first.path.stat().st_mtime_ns == built_at
