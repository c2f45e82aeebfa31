"""The tiled ``tl.dot`` W4A16 GEMM: each tile of the weight dequantized in registers, then
multiplied on the tensor cores with an fp32 accumulator. Programs walk the output tiles
GROUP_M tile rows at a time (the weight tiles they share stay in L2); for few rows K is
split across programs as well (see kernels/awq_common.py for how the splits add up).
GATED: over a gate | up weight, the output is SiLU(gate) * up (awq_common).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.awq_common import (
    biased_zeros,
    nibble_place_inverse,
    nibble_shifts,
    silu_mul_of_halves,
    store_or_accumulate,
    sum_of_splits,
    tile_columns,
    unpack_int4,
    unpack_int4_biased,
)


@triton.jit
def awq_dot_kernel(
    x_ptr,  # [M, K], rows stride_xm apart
    qweight_ptr,  # [K, N/8] int32
    qzeros_ptr,  # [K/G, N/8] int32
    scales_ptr,  # [K/G, N]
    bias_ptr,
    out_ptr,
    workspace_ptr,
    counters_ptr,
    M,
    N,
    stride_xm,
    stride_qweight,
    stride_qzeros,
    stride_scales,
    num_packed_cols,  # N / 8
    split_k,
    tiles_per_split,
    num_k_tiles,
    two_pow_23_bits_ptr,  # [1] int32 TWO_POW_23_BITS (awq_common.unpack_int4_biased)
    gate_words,  # GATED: N / 16, each half's packed words; else unused
    num_m_tiles,
    num_n_tiles,
    GROUP_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IS_SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    GATED: tl.constexpr,  # the weight is gate | up; store SiLU(gate) * up (awq_common)
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    tiles_per_group = GROUP_M * num_n_tiles
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = tl.minimum(num_m_tiles - first_m, GROUP_M)
    pid_m = first_m + (pid % tiles_per_group) % group_rows
    pid_n = (pid % tiles_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n, mask_n, offs_p, mask_p = tile_columns(
        pid_n, N, num_packed_cols, gate_words, BLOCK_N, GATED
    )
    gate_width = gate_words * 8  # GATED: the output's width
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    shifts = nibble_shifts(BLOCK_N)
    place_inverse = nibble_place_inverse(BLOCK_N)
    two_pow_23_bits = tl.load(two_pow_23_bits_ptr)

    # NOTE: BLOCK_K divides GROUP_SIZE, which divides K: a tile never straddles a group.
    first_tile = pid_k * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, num_k_tiles)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(first_tile, last_tile):
        k = tile * BLOCK_K + offs_k
        a = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=mask_m[:, None], other=0.0
        )
        packed = tl.load(
            qweight_ptr + k[:, None] * stride_qweight + offs_p[None, :],
            mask=mask_p[None, :],
            other=0,
        )
        group = (tile * BLOCK_K) // GROUP_SIZE
        packed_zeros = tl.load(qzeros_ptr + group * stride_qzeros + offs_p, mask=mask_p, other=0)
        scale = tl.load(scales_ptr + group * stride_scales + offs_n, mask=mask_n, other=0.0)
        # (q - z) * 16^p, exact, times the scale * 16^-p: the products of (q - z) * s.
        placed = unpack_int4_biased(packed, BLOCK_N, two_pow_23_bits)
        placed -= biased_zeros(unpack_int4(packed_zeros, shifts), BLOCK_N, two_pow_23_bits)[None, :]
        w = (placed * (scale.to(tl.float32) * place_inverse)[None, :]).to(DOT_DTYPE)
        acc = tl.dot(a.to(DOT_DTYPE), w, acc, input_precision=PRECISION)
    offsets = offs_m[:, None] * N + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    tile = pid_m * num_n_tiles + pid_n
    if GATED:
        acc, is_last = sum_of_splits(
            acc, offsets, mask, workspace_ptr, counters_ptr, tile, split_k, IS_SPLIT
        )
        half: tl.constexpr = BLOCK_N // 2
        out = silu_mul_of_halves(tl.reshape(acc, (BLOCK_M, 2, half)), out_ptr.dtype.element_ty)
        columns = pid_n * half + tl.arange(0, half)
        out_mask = mask_m[:, None] & (columns < gate_width)[None, :] & is_last
        tl.store(out_ptr + offs_m[:, None] * gate_width + columns[None, :], out, mask=out_mask)
    else:
        store_or_accumulate(
            acc,
            offsets,
            offs_n[None, :],
            mask,
            out_ptr,
            bias_ptr,
            workspace_ptr,
            counters_ptr,
            tile,
            split_k,
            HAS_BIAS,
            IS_SPLIT,
        )
