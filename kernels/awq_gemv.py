"""The decode W4A16 GEMV (M <= 8): no ``tl.dot``, so no 16-row padding and no shared
memory for the weights. Each program owns BLOCK_N output columns and a share of K's
groups, and unrolls each group's K tiles. Per weight, in fp32: one LOP3 (a mask and an
OR that make the nibble a float, the shift once per word), one subtract of the zero
(exact) and one multiply-add per row of x; the scale multiplies each group's sums once
per column and row, and the sum over K's rows happens once, after the loop. The static
report counts ~4.1 SASS instructions per weight at M = 1 on sm_87 and sm_90
(benchmarks/kernel_static.py).

Rows of x are not a third tensor dimension (Triton would give the 3-D product a layout
of its own and move every dequantized tile through shared memory to match it): the
weight tile is repeated BLOCK_M times along its columns and x's rows interleaved to
match, both in registers, so every product stays in the weight's own layout.

GATED: over a gate | up weight, each program's columns are matching halves of gate and
up, and it stores SiLU(gate) * up (kernels/awq_common.py): the activation costs no
launch of its own and nothing per weight.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.awq_common import (
    biased_zeros,
    gate_up_column,
    nibble_place_inverse,
    nibble_shifts,
    silu_mul_of_halves,
    store_or_accumulate,
    sum_of_splits,
    tile_columns,
    unpack_int4_biased,
)


@triton.jit
def _row(x_ptr, stride_xm, m, M, k, BLOCK_N: tl.constexpr):
    """x[m, k] broadcast to [BLOCK_K, BLOCK_N]; zeros for a padding row (m >= M)."""
    a = tl.load(x_ptr + m * stride_xm + k, mask=(k >= 0) & (m < M), other=0.0)
    return tl.broadcast_to(a.to(tl.float32)[:, None], (k.shape[0], BLOCK_N))


@triton.jit
def _pair(x_ptr, stride_xm, first, step, M, k, BLOCK_N: tl.constexpr):
    return tl.interleave(
        _row(x_ptr, stride_xm, first, M, k, BLOCK_N),
        _row(x_ptr, stride_xm, first + step, M, k, BLOCK_N),
    )


@triton.jit
def _interleaved_rows(x_ptr, stride_xm, M, k, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """[BLOCK_K, BLOCK_M * BLOCK_N] whose column j holds x[j % BLOCK_M, k]."""
    if BLOCK_M == 1:
        rows = _row(x_ptr, stride_xm, 0, M, k, BLOCK_N)
    elif BLOCK_M == 2:
        rows = _pair(x_ptr, stride_xm, 0, 1, M, k, BLOCK_N)
    elif BLOCK_M == 4:
        rows = tl.interleave(
            _pair(x_ptr, stride_xm, 0, 2, M, k, BLOCK_N),
            _pair(x_ptr, stride_xm, 1, 2, M, k, BLOCK_N),
        )
    else:
        tl.static_assert(BLOCK_M == 8)
        rows = tl.interleave(
            tl.interleave(
                _pair(x_ptr, stride_xm, 0, 4, M, k, BLOCK_N),
                _pair(x_ptr, stride_xm, 2, 4, M, k, BLOCK_N),
            ),
            tl.interleave(
                _pair(x_ptr, stride_xm, 1, 4, M, k, BLOCK_N),
                _pair(x_ptr, stride_xm, 3, 4, M, k, BLOCK_N),
            ),
        )
    return rows


@triton.jit
def _repeat_columns(w, BLOCK_M: tl.constexpr):
    """[R, C] -> [R, BLOCK_M * C]: column j holds w[:, j // BLOCK_M]."""
    if BLOCK_M >= 2:
        w = tl.interleave(w, w)
    if BLOCK_M >= 4:
        w = tl.interleave(w, w)
    if BLOCK_M >= 8:
        w = tl.interleave(w, w)
    return w


@triton.jit
def awq_gemv_kernel(
    x_ptr,  # [M, K], rows stride_xm apart
    qweight_ptr,  # [K, N/8] int32, rows stride_qweight apart
    qzeros_ptr,  # [K/G, N/8] int32, rows stride_qzeros apart
    scales_ptr,  # [K/G, N], rows stride_scales apart
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
    groups_per_split,
    num_groups,  # K / G
    two_pow_23_bits_ptr,  # [1] int32 TWO_POW_23_BITS (awq_common.unpack_int4_biased)
    gate_words,  # GATED: N / 16, each half's packed words; else unused
    GROUP_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IS_SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,  # M padded to a power of two
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # divides GROUP_SIZE
    GATED: tl.constexpr,  # the weight is gate | up; store SiLU(gate) * up (awq_common)
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n, mask_n, offs_p, mask_p = tile_columns(
        pid_n, N, num_packed_cols, gate_words, BLOCK_N, GATED
    )
    gate_width = gate_words * 8  # GATED: the output's width
    word_of_column = offs_n // 8  # in a row of qzeros
    offs_k = tl.arange(0, BLOCK_K)
    shifts = nibble_shifts(BLOCK_N)
    place_inverse = nibble_place_inverse(BLOCK_N)
    two_pow_23_bits = tl.load(two_pow_23_bits_ptr)

    first_group = pid_k * groups_per_split
    last_group = tl.minimum(first_group + groups_per_split, num_groups)
    acc = tl.zeros((BLOCK_K, BLOCK_M * BLOCK_N), dtype=tl.float32)
    for group in range(first_group, last_group):
        # A group's scales and zeros as [1, BLOCK_N] rows, not [BLOCK_N] vectors: with
        # vectors, Triton 3.4 and 3.6 (the Jetson image's, the H200 test machine's) emit
        # ~30% more instructions per weight (7.8-8.0 SASS at M = 1 against 6.0; 3.7 is
        # the same either way; the static report, benchmarks/kernel_static.py).
        scale = tl.load(
            scales_ptr + group * stride_scales + offs_n[None, :], mask=mask_n[None, :], other=0.0
        ).to(tl.float32)
        # Each column loads its own zeros' word (its eight columns share it: one load from
        # L1): unpacking a row of words by interleaving took three layout conversions
        # through shared memory a group (static report: 17 -> 11 barriers a launch).
        packed_zeros = tl.load(
            qzeros_ptr + group * stride_qzeros + word_of_column[None, :],
            mask=mask_n[None, :],
            other=0,
        )
        zero = biased_zeros((packed_zeros >> shifts[None, :]) & 0xF, BLOCK_N, two_pow_23_bits)
        # The scale multiplies the group's sums, not each weight: the group's K tiles
        # add x * (q - z) * 16^p (exact differences) into `part`, then one multiply-add
        # a column and row of x (static report, M = 1: 5.05 -> 4.29 SASS a weight).
        part = tl.zeros((BLOCK_K, BLOCK_M * BLOCK_N), dtype=tl.float32)
        # Unrolled: the loads of every tile of the group are in flight together.
        for sub in tl.static_range(GROUP_SIZE // BLOCK_K):
            k = group * GROUP_SIZE + sub * BLOCK_K + offs_k
            packed = tl.load(
                qweight_ptr + k[:, None] * stride_qweight + offs_p[None, :],
                mask=mask_p[None, :],
                other=0,
            )
            placed = unpack_int4_biased(packed, BLOCK_N, two_pow_23_bits) - zero
            rows = _interleaved_rows(x_ptr, stride_xm, M, k, BLOCK_N, BLOCK_M)
            part += rows * _repeat_columns(placed, BLOCK_M)
        acc += part * _repeat_columns(scale * place_inverse[None, :], BLOCK_M)

    j = tl.arange(0, BLOCK_M * BLOCK_N)  # column j: row j % BLOCK_M, column j // BLOCK_M
    row = j % BLOCK_M
    sums = tl.sum(acc, axis=0)
    if GATED:
        column, exists = gate_up_column(j // BLOCK_M, pid_n, gate_width, BLOCK_N // 2)
        sums, is_last = sum_of_splits(
            sums,
            row * N + column,
            (row < M) & exists,
            workspace_ptr,
            counters_ptr,
            pid_n,
            split_k,
            IS_SPLIT,
        )
        # sums' first half is gate's columns, its second up's (gate_up_column).
        half: tl.constexpr = BLOCK_M * BLOCK_N // 2
        out = silu_mul_of_halves(tl.reshape(sums, (1, 2, half)), out_ptr.dtype.element_ty)
        i = tl.arange(0, half)
        out_row = i % BLOCK_M
        out_column = pid_n * (BLOCK_N // 2) + i // BLOCK_M
        out_mask = (out_row < M) & (out_column < gate_width) & is_last
        tl.store(
            out_ptr + out_row * gate_width + out_column, tl.reshape(out, (half,)), mask=out_mask
        )
    else:
        column = pid_n * BLOCK_N + j // BLOCK_M
        store_or_accumulate(
            sums,
            row * N + column,
            column,
            (row < M) & (column < N),
            out_ptr,
            bias_ptr,
            workspace_ptr,
            counters_ptr,
            pid_n,
            split_k,
            HAS_BIAS,
            IS_SPLIT,
        )
