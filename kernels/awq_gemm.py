"""W4A16 linear over the AutoAWQ GEMM layout as stored on disk (no repack at load).

``out = x @ dequantize(qweight, qzeros, scales) + bias`` with the weight dequantized tile by
tile in registers and an fp32 accumulator. Two launch shapes of one kernel, picked by M:

- M <= 16 (decode): split-K GEMV. A 16-row tile is the smallest ``tl.dot`` takes, so N
  alone gives too few programs to saturate memory bandwidth; K is split too, each split
  writes fp32 partial sums, and a small kernel adds them (deterministic, unlike atomics).
- M > 16 (prefill): a plain tiled GEMM that writes the output directly.

Layout (see engine/quant/pack.py): ``qweight`` int32 [K, N/8], ``qzeros`` int32 [K/G, N/8],
``scales`` [K/G, N]. Nibble i of a packed column c holds column ``8c + [0,2,4,6,1,3,5,7][i]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import dot_operands, num_sms

GEMV_MAX_M = 16
MAX_SPLIT_K = 32


@triton.jit
def _unpack_int4(packed, shifts):
    """[R, C/8] or [C/8] packed int32 -> [R, C] or [C] values in [0, 15]."""
    packed = tl.interleave(packed, packed)
    packed = tl.interleave(packed, packed)
    packed = tl.interleave(packed, packed)  # each packed word now repeated for its 8 columns
    return (packed >> shifts) & 0xF


@triton.jit
def _awq_gemm_kernel(
    x_ptr,  # [M, K], row stride stride_xm
    qweight_ptr,
    qzeros_ptr,
    scales_ptr,
    bias_ptr,
    out_ptr,  # [M, N] in x's dtype, or [SPLIT_K, M, N] fp32 partial sums
    M,
    N,
    K,
    stride_xm,
    tiles_per_split,
    GROUP_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)  # packed columns
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask_p = offs_p < N // 8
    # Column j of each group of eight sits in nibble [0, 4, 1, 5, 2, 6, 3, 7][j].
    col = tl.arange(0, BLOCK_N) % 8
    shifts = ((col // 2) + (col % 2) * 4) * 4

    # NOTE: BLOCK_K divides GROUP_SIZE, which divides K: a tile never straddles a group
    # and needs no K mask.
    num_k_tiles = K // BLOCK_K
    first_tile = pid_k * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, num_k_tiles)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(first_tile, last_tile):
        k = tile * BLOCK_K + offs_k
        a = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=mask_m[:, None], other=0.0
        )
        packed = tl.load(
            qweight_ptr + k[:, None] * (N // 8) + offs_p[None, :], mask=mask_p[None, :], other=0
        )
        group = (tile * BLOCK_K) // GROUP_SIZE
        packed_zeros = tl.load(qzeros_ptr + group * (N // 8) + offs_p, mask=mask_p, other=0)
        scale = tl.load(scales_ptr + group * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        q = _unpack_int4(packed, shifts[None, :])
        zero = _unpack_int4(packed_zeros, shifts)
        w = ((q - zero[None, :]).to(tl.float32) * scale[None, :]).to(DOT_DTYPE)
        acc = tl.dot(a.to(DOT_DTYPE), w, acc, input_precision=PRECISION)

    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        out = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], out, mask=mask)
    else:
        partial_ptr = out_ptr + pid_k * M * N
        tl.store(partial_ptr + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)


@triton.jit
def _split_k_reduce_kernel(
    partial_ptr,  # [SPLIT_K, M * N] fp32
    bias_ptr,
    out_ptr,  # [M * N]
    MN,
    N,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):
        acc += tl.load(partial_ptr + split * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_config(num_rows: int, group_size: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Chosen so that no configuration
    spills registers on sm_80/sm_87 (ptxas -v); untuned on a GPU so far."""
    if num_rows <= GEMV_MAX_M:
        return 16, 128, min(group_size, 64), 4, 3
    if num_rows <= 32:
        return 32, 128, min(group_size, 64), 4, 3
    if num_rows <= 64:
        return 64, 128, min(group_size, 64), 8, 3
    return 128, 128, min(group_size, 32), 8, 4


def awq_linear(
    x: torch.Tensor,  # [..., K] fp16 / bf16 / fp32
    qweight: torch.Tensor,  # [K, N/8] int32
    qzeros: torch.Tensor,  # [K/G, N/8] int32
    scales: torch.Tensor,  # [K/G, N]
    group_size: int,
    bias: torch.Tensor | None = None,  # [N]
) -> torch.Tensor:  # [..., N] in x's dtype
    in_features, out_features = qweight.shape[0], scales.shape[1]
    assert x.shape[-1] == in_features and in_features % group_size == 0
    assert qweight.is_contiguous() and qzeros.is_contiguous() and scales.is_contiguous()
    x2 = x.reshape(-1, in_features)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    num_rows = x2.shape[0]
    out = torch.empty(num_rows, out_features, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out.view(*x.shape[:-1], out_features)
    dot_dtype, precision = dot_operands(x.dtype)
    block_m, block_n, block_k, num_warps, num_stages = _launch_config(num_rows, group_size)
    num_m_tiles = triton.cdiv(num_rows, block_m)
    num_n_tiles = triton.cdiv(out_features, block_n)
    num_k_tiles = in_features // block_k
    split_k = 1
    if num_rows <= GEMV_MAX_M:
        wanted = triton.cdiv(4 * num_sms(x.device), num_m_tiles * num_n_tiles)
        split_k = max(1, min(wanted, num_k_tiles, MAX_SPLIT_K))
    tiles_per_split = triton.cdiv(num_k_tiles, split_k)
    split_k = triton.cdiv(num_k_tiles, tiles_per_split)  # no split left without a tile
    target = out
    if split_k > 1:
        target = torch.empty(split_k, num_rows, out_features, dtype=torch.float32, device=x.device)
    _awq_gemm_kernel[(num_m_tiles, num_n_tiles, split_k)](
        x2,
        qweight,
        qzeros,
        scales,
        bias if bias is not None else scales,
        target,
        num_rows,
        out_features,
        in_features,
        x2.stride(0),
        tiles_per_split,
        GROUP_SIZE=group_size,
        HAS_BIAS=bias is not None,
        SPLIT_K=split_k,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        DOT_DTYPE=dot_dtype,
        PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if split_k > 1:
        num_elements = num_rows * out_features
        _split_k_reduce_kernel[(triton.cdiv(num_elements, 1024),)](
            target,
            bias if bias is not None else scales,
            out,
            num_elements,
            out_features,
            SPLIT_K=split_k,
            HAS_BIAS=bias is not None,
            BLOCK=1024,
        )
    return out.view(*x.shape[:-1], out_features)
