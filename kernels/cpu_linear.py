"""Weight-only int4 and int8 linears on a CPU, through torch's own kernels
(``aten._weight_int4pack_mm_for_cpu``: AVX2/AVX-512 on x86, NEON on Arm;
``aten._weight_int8pack_mm``), each beside its reference twin: the same activations
times the dequantized weight, in fp32.

int4 is group-wise with a zero point, as AWQ and round-to-nearest store it:
``w[n, k] = (q[n, k] - z[k // G, n]) * s[k // G, n]``, ``q, z`` in [0, 15]. torch's kernel
computes ``w = (q - 8) * s + m`` from a ``[K/G, N, 2]`` tensor of ``(s, m)`` pairs, so
``m = (8 - z) * s``: an integer in [-7, 8] times the scale, exact in fp32 (and rounded
once, like the scale itself, in a 16-bit type). int8 is symmetric per output channel:
``w[n, k] = q[n, k] * s[n]``.

The kernels run in the dtype the scales are packed in, whatever the activations' dtype
(cast in, and the result back): torch vectorizes them for bf16 activations only; fp32
and fp16 take a scalar path, 4-10x slower (measured on AVX2, torch 2.13), so a model in
fp32 runs its quantized linears in bf16 for speed, or in fp32 to be exact.

With int8 activations (``torch.int8`` as the dtype to compute in), the matmuls are
kernels/cpu_native.py's instead: the activations quantized to int8 with a scale per
block of in-features (``activation_block``; ``quantize_activations`` is the twin),
integer dot products, fp32 out. They are 2-3x faster than torch's bf16 kernels on AVX2
and lose about as much precision (relative output error ~0.4%, measured on random
layers); their twins are the references below fed ``quantize_activations``. Their int4
layout (``pack_int4_native``) keeps, for each 32 codes of a row, code j in the low
nibble of byte j and code j + 16 in its high nibble.

NOTE: CPU tensors only; the packed int4 layout is torch's own and depends on the CPU it
was packed on, so weights are packed at load, never stored.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels.cpu_native import NativeKernels
from kernels.reference import to_dtype

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's CPU int4 kernel implements
INT4_OUT_MULTIPLE = 16  # torch packs the int4 weight in blocks of 16 output channels
INT4_OFFSET = 8  # torch's kernel reads each 4-bit code q as (q - 8)
# torch's int8 kernel in bf16/fp16 misreads or crashes on other in-feature counts (torch
# 2.13: multiples of 8 on AVX2; on AVX-512, bf16 segfaults at 8, 24, 40, 200); fp32 takes
# any, but one rule for every dtype and CPU is simpler to keep.
INT8_IN_MULTIPLE = 16
INT8_MAX = 127
# Rows quantized at a time: a 152k-vocab head's fp32 temporaries would otherwise be
# several copies of a 545 MB table at the load's memory peak.
INT8_CHUNK_ROWS = 8192
NATIVE_BLOCK = 32  # codes per vector in the native layouts (QBLOCK in kernels/cpu_quant_gemm.c)
# In-features per activation scale, largest first (see ``activation_block``).
ACTIVATION_BLOCKS = (128, 64, NATIVE_BLOCK)
NATIVE_ROWS = 4  # weight rows per tile in the native int4 layout (ROWS there)
INT8_ACTIVATIONS = torch.int8  # the "dtype to compute in" of the native kernels


def scale_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype weight scales are stored in for kernels computing in ``dtype``."""
    return torch.float32 if dtype == INT8_ACTIVATIONS else dtype


def check_int4_shape(in_features: int, out_features: int, group_size: int) -> None:
    """Raise ValueError unless torch's CPU int4 kernel can run a layer of this shape."""
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(
            f"int4 group size {group_size} is not supported on CPU; torch's kernel takes "
            f"{', '.join(map(str, INT4_GROUP_SIZES))}"
        )
    if in_features % group_size:
        raise ValueError(f"int4 group size {group_size} does not divide {in_features} in-features")
    if out_features % INT4_OUT_MULTIPLE:
        raise ValueError(
            f"{out_features} out-features is not a multiple of {INT4_OUT_MULTIPLE}, as torch's "
            "CPU int4 packing needs"
        )


def check_int8_shape(in_features: int) -> None:
    if in_features % INT8_IN_MULTIPLE:
        raise ValueError(
            f"{in_features} in-features is not a multiple of {INT8_IN_MULTIPLE}, as torch's "
            "CPU int8 kernel needs"
        )


def activation_block(reduced: int) -> int:
    """In-features per activation scale of a native linear whose weight scales hold for
    ``reduced`` in-features (int4: the group size; int8: all K): the largest of
    ACTIVATION_BLOCKS dividing it. The kernels sum the integer products of a block before
    one float multiply-add, so larger blocks make batches cheaper (docs/benchmarks.md, run
    F: 8-row int4 linears 1.5x faster with VNNI and 4-row passes); the cost in
    precision, measured on SmolLM2-135M with every linear's input rounded so (held-out
    perplexity, fp32 weights): +0.22% in blocks of 32, +0.66% of 64, +0.77% of 128 (64
    where 128 does not divide), +0.93% of 256 (llama.cpp's Q8_K, for its K-quants)."""
    return next(block for block in ACTIVATION_BLOCKS if reduced % block == 0)


def check_native_shape(in_features: int, group_size: int) -> None:
    """Raise ValueError unless the native kernels can run a layer of this shape."""
    if in_features % NATIVE_BLOCK or group_size % NATIVE_BLOCK:
        raise ValueError(
            f"{in_features} in-features in groups of {group_size}: the int8-activation "
            f"kernels need multiples of {NATIVE_BLOCK}"
        )
    if in_features % group_size:
        raise ValueError(f"int4 group size {group_size} does not divide {in_features} in-features")


def check_int4_kernel_shape(
    in_features: int, out_features: int, group_size: int, dtype: torch.dtype
) -> None:
    """Raise ValueError unless the int4 kernel computing in ``dtype`` takes this shape."""
    if dtype == INT8_ACTIVATIONS:
        check_native_shape(in_features, group_size)
    else:
        check_int4_shape(in_features, out_features, group_size)


def pack_int4_native(
    codes: torch.Tensor,  # [N, K] integers in [0, 15]
    zeros: torch.Tensor,  # [K/G, N] integers in [0, 15]
    scales: torch.Tensor,  # [K/G, N]
    group_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weight, scales, offsets)`` for kernels/cpu_native.py, ``w = q * s - offset``
    (offset = z * s: exact in fp32 for the scale as stored), in tiles of NATIVE_ROWS rows
    (N padded with zero rows): weight [tiles, K/32, rows, 16] uint8, scales and offsets
    [tiles, K/G, rows] fp32. ValueError for a shape the kernels cannot take."""
    out_features, in_features = codes.shape
    check_native_shape(in_features, group_size)
    padded = out_features + -out_features % NATIVE_ROWS
    num_tiles, num_blocks = padded // NATIVE_ROWS, in_features // NATIVE_BLOCK
    rows = codes.new_zeros(padded, in_features, dtype=torch.uint8)
    rows[:out_features] = codes
    halves = rows.reshape(num_tiles, NATIVE_ROWS, num_blocks, 2, NATIVE_BLOCK // 2)
    weight = (halves[:, :, :, 0] | (halves[:, :, :, 1] << 4)).transpose(1, 2)

    def by_tile(per_group: torch.Tensor) -> torch.Tensor:  # [K/G, N] -> [tiles, K/G, rows]
        full = per_group.new_zeros(per_group.shape[0], padded)
        full[:, :out_features] = per_group
        return full.reshape(-1, num_tiles, NATIVE_ROWS).transpose(0, 1).contiguous()

    scales32 = scales.float()
    offsets = zeros.float() * scales32
    return weight.reshape(num_tiles, -1).contiguous(), by_tile(scales32), by_tile(offsets)


def quantize_activations(x: torch.Tensor, block: int) -> torch.Tensor:
    """The native kernels' view of ``x`` [..., K]: rounded (half to even) to int8 steps
    of ``max|x| / 127`` per ``block`` in-features, returned as fp32 values."""
    blocks = x.float().reshape(*x.shape[:-1], -1, block)
    scales = blocks.abs().amax(dim=-1, keepdim=True) / 127
    inverse = torch.where(scales > 0, 1.0 / scales, torch.zeros_like(scales))
    return (torch.round(blocks * inverse) * scales).reshape(x.shape)


def pack_int4(
    codes: torch.Tensor,  # [N, K] integers in [0, 15]
    zeros: torch.Tensor,  # [K/G, N] integers in [0, 15]
    scales: torch.Tensor,  # [K/G, N]
    group_size: int,
    dtype: torch.dtype,  # the dtype the kernel computes in
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed_weight, scales_and_zeros)`` for ``int4_linear``; ValueError for a shape
    the kernel cannot take."""
    out_features, in_features = codes.shape
    check_int4_shape(in_features, out_features, group_size)
    num_groups = in_features // group_size
    if zeros.shape != (num_groups, out_features) or scales.shape != zeros.shape:
        raise ValueError(
            f"int4 zeros {tuple(zeros.shape)} and scales {tuple(scales.shape)} must both be "
            f"{(num_groups, out_features)} for a {out_features} x {in_features} weight"
        )
    packed_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        codes.to(torch.int32).contiguous(), 1
    )
    scales32 = scales.float()
    offsets = (INT4_OFFSET - zeros.float()) * scales32
    scales_and_zeros = torch.stack([scales32, offsets], dim=-1).to(dtype).contiguous()
    return packed_weight, scales_and_zeros


def int4_linear(
    x: torch.Tensor,  # [..., K]
    packed_weight: torch.Tensor,  # from pack_int4
    scales_and_zeros: torch.Tensor,  # [K/G, N, 2] in the dtype to compute in
    group_size: int,
    bias: torch.Tensor | None = None,  # [N] in x's dtype
) -> torch.Tensor:  # [..., N] in x's dtype
    def matmul(rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, packed_weight, group_size, scales_and_zeros
        )

    return _linear_rows(x, scales_and_zeros.shape[1], scales_and_zeros.dtype, matmul, bias)


def native_int4_linear(
    kernels: NativeKernels,
    x: torch.Tensor,  # [..., K]
    weight: torch.Tensor,  # from pack_int4_native
    scales: torch.Tensor,
    offsets: torch.Tensor,
    group_size: int,
    out_features: int,
    bias: torch.Tensor | None = None,  # [N] in x's dtype
) -> torch.Tensor:  # [..., N] in x's dtype
    fused_bias, bias = _split_bias(bias)

    def matmul(rows: torch.Tensor) -> torch.Tensor:
        return kernels.int4_linear(
            rows, weight, scales, offsets, group_size, activation_block(group_size),
            out_features, fused_bias,
        )  # fmt: skip

    return _linear_rows(x, out_features, torch.float32, matmul, bias)


def _split_bias(
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # (for the kernel, to add after)
    """An fp32 bias is added by the native kernel itself; another dtype's after, in it."""
    if bias is not None and bias.dtype == torch.float32:
        return bias.contiguous(), None
    return None, bias


def _linear_rows(
    x: torch.Tensor,  # [..., K]
    out_features: int,
    dtype: torch.dtype,  # what ``matmul`` takes
    matmul: Callable[[torch.Tensor], torch.Tensor],  # [M, K] contiguous -> [M, N]
    bias: torch.Tensor | None,
) -> torch.Tensor:  # [..., N] in x's dtype
    rows = to_dtype(x.reshape(-1, x.shape[-1]), dtype).contiguous()
    if rows.shape[0] == 0:  # the kernels cannot reduce over no rows
        return x.new_zeros(*x.shape[:-1], out_features)
    out = to_dtype(matmul(rows), x.dtype)
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], out_features)


def int4_linear_reference(
    x: torch.Tensor,  # [..., K]
    codes: torch.Tensor,  # [N, K]
    zeros: torch.Tensor,  # [K/G, N]
    scales: torch.Tensor,  # [K/G, N]
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # [..., N] in x's dtype
    """``int4_linear``'s twin: ``x @ ((q - z) * s).T + bias`` with the weight
    dequantized whole, in fp32 (x and s as given: round them to the kernel's dtype to
    compare like with like)."""
    z = zeros.float().repeat_interleave(group_size, dim=0)  # [K, N]
    s = scales.float().repeat_interleave(group_size, dim=0)
    out = x.float() @ ((codes.t().float() - z) * s)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def quantize_int8(
    weight: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:  # ([N, K] int8, [N] in scale_dtype(dtype))
    """Round-to-nearest symmetric int8 per output channel of an ``[N, K]`` weight. The
    codes round against the scales as stored in ``dtype``, so that ``q * s`` is the
    weight's nearest value on the grid the kernel multiplies by."""
    tiled = int8_tiled(dtype, weight.shape[1])
    dtype = scale_dtype(dtype)
    codes = torch.empty(weight.shape, dtype=torch.int8)
    scales = torch.empty(weight.shape[0], dtype=dtype)
    for start in range(0, weight.shape[0], INT8_CHUNK_ROWS):  # NOTE: a multiple of the tile
        w = weight[start : start + INT8_CHUNK_ROWS].float()
        chunk_scales = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=1e-12).to(dtype)
        rounded = torch.round(w / chunk_scales.float()[:, None]).clamp_(-INT8_MAX, INT8_MAX)
        codes[start : start + len(w)] = tile_int8_rows(rounded) if tiled else rounded
        scales[start : start + len(w)] = chunk_scales
    return codes, scales


def int8_tiled(dtype: torch.dtype, in_features: int) -> bool:
    """Whether ``quantize_int8`` lays the codes out in the native kernel's tiles: for
    int8 activations, where the kernel can take the in-features."""
    return dtype == INT8_ACTIVATIONS and in_features % NATIVE_BLOCK == 0


def tile_int8_rows(rows: torch.Tensor) -> torch.Tensor:  # [R, K] -> [R, K]
    """The native int8 layout of ``rows``: each whole tile of NATIVE_ROWS rows becomes, for
    each 32-block, its 32 codes of row 0, then of the tile's next rows; the last
    R % NATIVE_ROWS rows stay as they are (so that chunks of whole tiles tile alone)."""
    whole, in_features = rows.shape[0] - rows.shape[0] % NATIVE_ROWS, rows.shape[1]
    tiles = rows[:whole].reshape(-1, NATIVE_ROWS, in_features // NATIVE_BLOCK, NATIVE_BLOCK)
    return torch.cat([tiles.transpose(1, 2).reshape(whole, in_features), rows[whole:]])


def untile_int8_rows(tiled: torch.Tensor) -> torch.Tensor:  # [R, K] -> [R, K]
    """``tile_int8_rows``' inverse: the codes row by row."""
    whole, in_features = tiled.shape[0] - tiled.shape[0] % NATIVE_ROWS, tiled.shape[1]
    tiles = tiled[:whole].reshape(-1, in_features // NATIVE_BLOCK, NATIVE_ROWS, NATIVE_BLOCK)
    return torch.cat([tiles.transpose(1, 2).reshape(whole, in_features), tiled[whole:]])


def int8_linear(
    x: torch.Tensor,  # [..., K]
    weight: torch.Tensor,  # [N, K] int8
    scales: torch.Tensor,  # [N] in the dtype to compute in
    bias: torch.Tensor | None = None,  # [N] in x's dtype
) -> torch.Tensor:  # [..., N] in x's dtype
    def matmul(rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(rows, weight, scales)

    return _linear_rows(x, weight.shape[0], scales.dtype, matmul, bias)


def native_int8_linear(
    kernels: NativeKernels,
    x: torch.Tensor,  # [..., K], K a multiple of 32
    weight: torch.Tensor,  # [N, K] int8
    scales: torch.Tensor,  # [N] fp32
    bias: torch.Tensor | None = None,  # [N] in x's dtype
) -> torch.Tensor:  # [..., N] in x's dtype
    fused_bias, bias = _split_bias(bias)
    block = activation_block(weight.shape[1])

    def matmul(rows: torch.Tensor) -> torch.Tensor:
        return kernels.int8_linear(rows, weight, scales, block, fused_bias)

    return _linear_rows(x, weight.shape[0], torch.float32, matmul, bias)


def int8_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``int8_linear``'s twin: ``x @ (q * s).T + bias`` dequantized whole, in fp32."""
    out = x.float() @ (weight.float() * scales.float()[:, None]).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def int8_rows(
    ids: torch.Tensor,  # [...] int64
    weight: torch.Tensor,  # [V, H] int8, in tiles if ``tiled`` (tile_int8_rows)
    scales: torch.Tensor,  # [V]
    dtype: torch.dtype,
    tiled: bool = False,
) -> torch.Tensor:  # [..., H]
    """The embedding lookup of an int8 table: only the rows read are dequantized."""
    rows = weight.view(-1)[_tiled_offsets(ids, *weight.shape)] if tiled else weight[ids]
    return (rows.float() * scales[ids].float()[..., None]).to(dtype)


def _tiled_offsets(ids: torch.Tensor, num_rows: int, in_features: int) -> torch.Tensor:
    """[..., K]: where each code of each row ``ids`` sits in a tiled table, flattened."""
    k = torch.arange(in_features, device=ids.device)
    n = ids[..., None]
    in_tile = (
        (n - n % NATIVE_ROWS) * in_features
        + (k // NATIVE_BLOCK) * (NATIVE_ROWS * NATIVE_BLOCK)
        + (n % NATIVE_ROWS) * NATIVE_BLOCK
        + k % NATIVE_BLOCK
    )
    whole = num_rows - num_rows % NATIVE_ROWS
    return torch.where(n < whole, in_tile, n * in_features + k)
