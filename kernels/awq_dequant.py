"""Dequantize a whole AutoAWQ weight to 16 bits, for the ``dequant_matmul`` variant: at
large M the GEMM is compute-bound, and cuBLAS on the dense weight may beat dequantizing
inside every tile. The K x N temporary is the price."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.awq_common import nibble_shifts, unpack_int4

BLOCK_K, BLOCK_N = 32, 256


@triton.jit
def _dequantize_kernel(
    qweight_ptr,  # [K, N/8] int32
    qzeros_ptr,  # [K/G, N/8] int32
    scales_ptr,  # [K/G, N]
    out_ptr,  # [K, N]
    N,
    stride_qweight,
    stride_qzeros,
    stride_scales,
    num_packed_cols,  # N / 8
    GROUP_SIZE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = tl.program_id(1) * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    mask_n = offs_n < N
    mask_p = offs_p < num_packed_cols
    shifts = nibble_shifts(BLOCK_N)
    packed = tl.load(
        qweight_ptr + k[:, None] * stride_qweight + offs_p[None, :], mask=mask_p[None, :], other=0
    )
    group = (tl.program_id(0) * BLOCK_K) // GROUP_SIZE  # NOTE: BLOCK_K divides GROUP_SIZE
    packed_zeros = tl.load(qzeros_ptr + group * stride_qzeros + offs_p, mask=mask_p, other=0)
    scale = tl.load(scales_ptr + group * stride_scales + offs_n, mask=mask_n, other=0.0)
    q = unpack_int4(packed, shifts[None, :])
    zero = unpack_int4(packed_zeros, shifts)
    w = (q - zero[None, :]).to(tl.float32) * scale.to(tl.float32)[None, :]
    out_ptrs = out_ptr + k[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, w.to(out_ptr.dtype.element_ty), mask=mask_n[None, :])


def dequantize(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:  # [K, N] in scales' dtype
    in_features, out_features = qweight.shape[0], scales.shape[1]
    block_k = min(BLOCK_K, group_size)
    out = torch.empty(in_features, out_features, dtype=scales.dtype, device=scales.device)
    grid = (in_features // block_k, triton.cdiv(out_features, BLOCK_N))
    _dequantize_kernel[grid](
        qweight,
        qzeros,
        scales,
        out,
        out_features,
        qweight.stride(0),
        qzeros.stride(0),
        scales.stride(0),
        qweight.shape[1],
        GROUP_SIZE=group_size,
        BLOCK_K=block_k,
        BLOCK_N=BLOCK_N,
    )
    return out
