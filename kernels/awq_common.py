"""What the W4A16 kernels share: int4 unpacking in registers, and the epilogue that either
stores an output tile or, when K is split across programs, adds it into an fp32 workspace
whose last arriving program writes the output (no separate reduce kernel). Over a
gate | up weight, a GATED launch's tiles hold matching columns of both halves
(``gate_up_column``) and store SiLU(gate) * up (``silu_mul_of_halves``): one launch
for the projection and the activation.

Layout (see engine/quant/pack.py): ``qweight`` int32 [K, N/8], ``qzeros`` int32 [K/G, N/8],
``scales`` [K/G, N]. Column j of each group of eight sits in nibble [0,4,1,5,2,6,3,7][j].
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.activation import silu_mul


@triton.jit
def nibble_of_column(BLOCK_N: tl.constexpr):
    """[BLOCK_N] which nibble of its packed word holds each column (natural order)."""
    col = tl.arange(0, BLOCK_N) % 8
    return (col // 2) + (col % 2) * 4


@triton.jit
def nibble_shifts(BLOCK_N: tl.constexpr):
    """[BLOCK_N] bit shifts that bring each column's nibble down."""
    return nibble_of_column(BLOCK_N) * 4


@triton.jit
def repeat_words(packed):
    """[..., C/8] -> [..., C]: each word repeated for its eight columns, inside one
    thread (interleave keeps the copies in registers: no shuffle, no shared memory)."""
    packed = tl.interleave(packed, packed)
    packed = tl.interleave(packed, packed)
    return tl.interleave(packed, packed)


@triton.jit
def unpack_int4(packed, shifts):
    """[R, C/8] or [C/8] packed int32 -> [R, C] or [C] int32 values in [0, 15]."""
    return (repeat_words(packed) >> shifts) & 0xF


# fp32 2^23, where the ulp is 1: OR-ed with an integer q < 2^23, it is the float 2^23 + q
# (int-to-float conversion runs at a quarter of the FMA rate; an OR at the full rate).
TWO_POW_23_BITS = tl.constexpr(0x4B000000)


@triton.jit
def nibble_place_shifts(BLOCK_N: tl.constexpr):
    """[BLOCK_N] 4p, where ``unpack_int4_biased`` leaves each column's value at 16^p:
    p = 0-3 for nibbles 0-3, 1-4 for nibbles 4-7."""
    nibble = nibble_of_column(BLOCK_N)
    return tl.where(nibble >= 4, nibble - 3, nibble) * 4


@triton.jit
def nibble_place_inverse(BLOCK_N: tl.constexpr):
    """[BLOCK_N] 16^-p (``nibble_place_shifts``): a scale multiplied by it undoes the
    place exactly (a power of two). Dividing by 16^p instead put a reciprocal and its
    range checks in the GEMV's loop (static report: 783 -> 775 SASS instructions a group
    on sm_87)."""
    return tl.exp2(-nibble_place_shifts(BLOCK_N).to(tl.float32))


@triton.jit
def biased_zeros(zero, BLOCK_N: tl.constexpr, two_pow_23_bits):
    """[..., BLOCK_N] zeros z in [0, 15] -> fp32 2^23 + z * 16^p, to subtract from
    ``unpack_int4_biased``'s values: the difference, (q - z) * 16^p, is exact."""
    placed = zero << nibble_place_shifts(BLOCK_N)
    return (placed | two_pow_23_bits).to(tl.float32, bitcast=True)


@triton.jit
def unpack_int4_biased(packed, BLOCK_N: tl.constexpr, two_pow_23_bits):
    """[R, C/8] packed int32 -> [R, C] fp32 ``2^23 + q * 16^p``: each value is masked
    where it lies, so no per-weight shift, and OR-ed into 2^23 (TWO_POW_23_BITS): one
    LOP3 a weight. Nibbles 4-7 come from the word shifted down once by 12, not 16, so
    they land at places 1-4 (q * 16^4 < 2^20 stays exact): at place 0, ptxas extracts
    the nibble with an SGXT and ORs it apart (static report, M = 1: 4.29 -> 4.04 SASS a
    weight).

    ``two_pow_23_bits`` is TWO_POW_23_BITS as a value loaded at run time, so that ptxas
    holds it in a register and merges the AND and the OR (an instruction takes one
    immediate or constant-bank operand: with the literal, or a kernel parameter on
    sm_87, every weight took two LOP3s; static report, M = 1: 6.05 -> 5.05 SASS a
    weight)."""
    nibble = nibble_of_column(BLOCK_N)
    word = repeat_words(packed.to(tl.uint32, bitcast=True))
    # NOTE: per register these are constants (a thread holds whole groups of eight), so
    # the select and the masks fold away and the shift is shared by a word's 8 copies.
    half = tl.where((nibble >= 4)[None, :], word >> 12, word)
    bits = half & (0xF << nibble_place_shifts(BLOCK_N)).to(tl.uint32)[None, :]
    return (bits | two_pow_23_bits.to(tl.uint32)).to(tl.float32, bitcast=True)


@triton.jit
def gate_up_column(n, pid_n, width, HALF: tl.constexpr):
    """Column ``n`` of GATED tile ``pid_n`` of a gate | up weight, each ``width`` wide (in
    columns, or in packed words): the tile's first HALF columns are gate's, its next HALF
    the same columns of up, so one program holds both inputs of each SiLU(gate) * up.
    Returns (the column in gate | up, whether it exists)."""
    in_half = pid_n * HALF + n % HALF
    return in_half + (n // HALF) * width, in_half < width


@triton.jit
def tile_columns(pid_n, N, num_packed_cols, gate_words, BLOCK_N: tl.constexpr, GATED: tl.constexpr):
    """Output tile ``pid_n``'s columns of the weight and of its packed words, with their
    masks: BLOCK_N in a row, or for GATED the halves ``gate_up_column`` gives, each half
    ``gate_words`` packed words wide."""
    if GATED:
        # NOTE: the width comes in words: a multiple of 16 there (the JIT's specialization)
        # keeps up's first word 16-aligned, so the loads stay 128-bit wide.
        offs_n, mask_n = gate_up_column(tl.arange(0, BLOCK_N), pid_n, gate_words * 8, BLOCK_N // 2)
        offs_p, mask_p = gate_up_column(
            tl.arange(0, BLOCK_N // 8), pid_n, gate_words, BLOCK_N // 16
        )
    else:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_p = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
        mask_n = offs_n < N
        mask_p = offs_p < num_packed_cols
    return offs_n, mask_n, offs_p, mask_p


@triton.jit
def silu_mul_of_halves(acc, dtype: tl.constexpr):
    """[A, 2, B] fp32 sums (gate, then up) -> [A, B] SiLU(gate) * up in ``dtype``, with
    gate and up first rounded to ``dtype``: what a gate_up launch that stores them and
    ``silu_and_mul`` after it compute, bit for bit."""
    gate, up = tl.split(tl.permute(acc, (0, 2, 1)))
    return silu_mul(gate.to(dtype).to(tl.float32), up.to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def sum_of_splits(
    acc,  # fp32, any shape: this program's sums over its share of K
    offsets,  # acc's flat positions in the [M, N] output (row * N + column)
    mask,
    workspace_ptr,  # [M * N] fp32, all zero between launches
    counters_ptr,  # [num output tiles] int32, all zero between launches
    tile,  # this output tile's index into counters_ptr
    split_k,  # programs that share the tile
    IS_SPLIT: tl.constexpr,  # split_k > 1 (a constexpr: one compile for any split count)
):
    """(the sums over all of K, whether this program stores them): when K is split, every
    program adds its sums into the workspace and the last to arrive holds the total."""
    if IS_SPLIT:
        tl.atomic_add(workspace_ptr + offsets, acc, mask=mask, sem="relaxed")
        # NOTE: every thread's adds are done before one thread announces the arrival; the
        # acq_rel counter orders them before the last program's reads.
        tl.debug_barrier()
        arrived = tl.atomic_add(counters_ptr + tile, 1, sem="acq_rel")
        is_last = arrived == split_k - 1
        mask = mask & is_last
        # Read the total from L2 (".cg": L1 is not coherent) and leave zeros for the next
        # launch (a CUDA graph replays it): nothing else touches this tile until then.
        acc = tl.load(workspace_ptr + offsets, mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(workspace_ptr + offsets, tl.zeros_like(acc), mask=mask)
        tl.store(counters_ptr + tile, 0, mask=is_last)
    else:
        is_last = tl.full((), 1, tl.int1)
    return acc, is_last


@triton.jit
def store_or_accumulate(
    acc,  # fp32, any shape: this program's sums over its share of K
    offsets,  # acc's flat positions in the [M, N] output (row * N + column)
    columns,  # acc's output columns (for the bias)
    mask,
    out_ptr,  # [M, N] contiguous, in the activations' dtype
    bias_ptr,
    workspace_ptr,
    counters_ptr,
    tile,
    split_k,
    HAS_BIAS: tl.constexpr,
    IS_SPLIT: tl.constexpr,
):
    """Store the output tile, summed over K's splits (``sum_of_splits``), plus the bias."""
    acc, is_last = sum_of_splits(
        acc, offsets, mask, workspace_ptr, counters_ptr, tile, split_k, IS_SPLIT
    )
    mask = mask & is_last
    if HAS_BIAS:
        acc += tl.load(bias_ptr + columns, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)
