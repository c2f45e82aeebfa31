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

NOTE: CPU tensors only; the packed int4 layout is torch's own and depends on the CPU it
was packed on, so weights are packed at load, never stored.
"""

from __future__ import annotations

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's CPU int4 kernel implements
INT4_OUT_MULTIPLE = 16  # torch packs the int4 weight in blocks of 16 output channels
INT4_OFFSET = 8  # torch's kernel reads each 4-bit code q as (q - 8)
# torch's int8 kernel in bf16/fp16 misreads (or crashes on) other in-feature counts
# (torch 2.13, AVX2); fp32 takes any, but one rule for every dtype is simpler to keep.
INT8_IN_MULTIPLE = 8
INT8_MAX = 127
# Rows quantized at a time: a 152k-vocab head's fp32 temporaries would otherwise be
# several copies of a 545 MB table at the load's memory peak.
INT8_CHUNK_ROWS = 8192


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
    out_features = scales_and_zeros.shape[1]
    x2 = x.reshape(-1, x.shape[-1]).to(scales_and_zeros.dtype).contiguous()
    if x2.shape[0] == 0:  # the kernel cannot reduce over no rows
        return x.new_zeros(*x.shape[:-1], out_features)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(
        x2, packed_weight, group_size, scales_and_zeros
    ).to(x.dtype)
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
) -> tuple[torch.Tensor, torch.Tensor]:  # ([N, K] int8, [N] in dtype)
    """Round-to-nearest symmetric int8 per output channel of an ``[N, K]`` weight. The
    codes round against the scales as stored in ``dtype``, so that ``q * s`` is the
    weight's nearest value on the grid the kernel multiplies by."""
    codes = torch.empty(weight.shape, dtype=torch.int8)
    scales = torch.empty(weight.shape[0], dtype=dtype)
    for start in range(0, weight.shape[0], INT8_CHUNK_ROWS):
        w = weight[start : start + INT8_CHUNK_ROWS].float()
        chunk_scales = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=1e-12).to(dtype)
        rounded = torch.round(w / chunk_scales.float()[:, None]).clamp_(-INT8_MAX, INT8_MAX)
        codes[start : start + len(w)] = rounded
        scales[start : start + len(w)] = chunk_scales
    return codes, scales


def int8_linear(
    x: torch.Tensor,  # [..., K]
    weight: torch.Tensor,  # [N, K] int8
    scales: torch.Tensor,  # [N] in the dtype to compute in
    bias: torch.Tensor | None = None,  # [N] in x's dtype
) -> torch.Tensor:  # [..., N] in x's dtype
    out_features = weight.shape[0]
    x2 = x.reshape(-1, x.shape[-1]).to(scales.dtype).contiguous()
    if x2.shape[0] == 0:
        return x.new_zeros(*x.shape[:-1], out_features)
    out = torch.ops.aten._weight_int8pack_mm(x2, weight, scales).to(x.dtype)
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], out_features)


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
    weight: torch.Tensor,  # [V, H] int8
    scales: torch.Tensor,  # [V]
    dtype: torch.dtype,
) -> torch.Tensor:  # [..., H]
    """The embedding lookup of an int8 table: only the rows read are dequantized."""
    return (weight[ids].float() * scales[ids].float()[..., None]).to(dtype)
