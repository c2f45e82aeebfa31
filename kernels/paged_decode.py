"""Decode attention over the paged KV cache ("flash decoding"): one new token per sequence.

One program per (sequence, KV head, split of the context): the query heads that share the
KV head are one tile, so each K/V row is read once for the whole group; softmax is online,
in fp32 and base 2. The last split of a (sequence, KV head) to finish merges the splits'
partial results (an arrival counter, as the W4A16 split-K does), and one split writes its
output directly: one launch either way. The split count depends only on tensor shapes
(never on values), so decode needs no host sync and can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from kernels.triton_utils import dot_operands, num_sms

LOG2E = math.log2(math.e)
MAX_SPLITS = 32
MIN_TOKENS_PER_SPLIT = 256
BLOCK_N = 32  # context tokens per inner step


@triton.jit
def _decode_split_kernel(
    query_ptr,  # [num_seqs, num_heads, head_dim], rows stride_qt apart
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache_ptr,
    block_tables_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32
    part_out_ptr,  # [num_seqs, num_heads, num_splits, head_dim] fp32
    part_max_ptr,  # [num_seqs, num_heads, num_splits] fp32, base-2 log domain
    part_sum_ptr,
    counters_ptr,  # [num_seqs * num_kv_heads] int32, all zero between launches
    out_ptr,  # [num_seqs, num_heads, head_dim], rows stride_ot apart
    qk_scale,  # softmax scale * log2(e)
    stride_qt,
    stride_bt,
    stride_ot,
    num_splits,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,  # query heads per KV head
    GROUP_ROWS: tl.constexpr,  # GROUP padded to a power of two >= 16 (tl.dot's minimum)
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_N: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    ONE_SPLIT: tl.constexpr,  # num_splits == 1: the result is final, nothing to merge
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    chunk = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)

    rows = tl.arange(0, GROUP_ROWS)
    heads = kv_head * GROUP + rows
    row_mask = rows < GROUP
    dims = tl.arange(0, HEAD_DIM_P)
    dim_mask = dims < HEAD_DIM
    q = tl.load(
        query_ptr + seq * stride_qt + heads[:, None] * HEAD_DIM + dims[None, :],
        mask=row_mask[:, None] & dim_mask[None, :],
        other=0.0,
    ).to(DOT_DTYPE)

    m = tl.full((GROUP_ROWS,), float("-inf"), dtype=tl.float32)
    denom = tl.zeros((GROUP_ROWS,), dtype=tl.float32)
    acc = tl.zeros((GROUP_ROWS, HEAD_DIM_P), dtype=tl.float32)
    for kv_start in range(start, end, BLOCK_N):
        pos = kv_start + tl.arange(0, BLOCK_N)
        pos_mask = pos < end
        block = tl.load(
            block_tables_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=pos_mask, other=0
        )
        row_offs = (block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE) * (NUM_KV_HEADS * HEAD_DIM)
        kv_offs = row_offs[:, None] + kv_head * HEAD_DIM + dims[None, :]
        kv_mask = pos_mask[:, None] & dim_mask[None, :]
        k = tl.load(k_cache_ptr + kv_offs, mask=kv_mask, other=0.0).to(DOT_DTYPE)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        scores = tl.where(pos_mask[None, :], scores, float("-inf"))
        # Every step has at least one real position, so m_new is finite.
        m_new = tl.maximum(m, tl.max(scores, 1))
        p = tl.exp2(scores - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        denom = denom * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + kv_offs, mask=kv_mask, other=0.0).to(DOT_DTYPE)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision=PRECISION)
        m = m_new

    out_ptrs = out_ptr + seq * stride_ot + heads[:, None] * HEAD_DIM + dims[None, :]
    out_mask = row_mask[:, None] & dim_mask[None, :]
    if ONE_SPLIT:
        # seq_len >= 1, so the one split saw a real position and denom > 0.
        tl.store(out_ptrs, (acc / denom[:, None]).to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # An empty split (start >= end) leaves m = -inf and denom = 0: the merge gives it
        # no weight.
        parts = (seq * NUM_HEADS + heads) * num_splits  # [GROUP_ROWS]: split 0's entries
        tl.store(part_max_ptr + parts + split, m, mask=row_mask)
        tl.store(part_sum_ptr + parts + split, denom, mask=row_mask)
        part_out_ptrs = part_out_ptr + (parts + split)[:, None] * HEAD_DIM + dims[None, :]
        tl.store(part_out_ptrs, acc, mask=out_mask)
        # NOTE: every thread's stores are done before one thread announces the arrival;
        # the acq_rel counter orders them before the last program's reads.
        tl.debug_barrier()
        counter = counters_ptr + seq * NUM_KV_HEADS + kv_head
        if tl.atomic_add(counter, 1, sem="acq_rel") == num_splits - 1:
            out = _merge_splits(
                part_out_ptr,
                part_max_ptr,
                part_sum_ptr,
                parts,
                num_splits,
                row_mask,
                out_mask,
                GROUP_ROWS,
                HEAD_DIM,
                HEAD_DIM_P,
            )
            tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=out_mask)
            tl.store(counter, 0)  # zero again for the next launch (a CUDA graph replays it)


@triton.jit
def _merge_splits(
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    parts,  # [GROUP_ROWS]: each row's split 0 in the partial buffers
    num_splits,
    row_mask,
    out_mask,
    GROUP_ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P: tl.constexpr,
):
    """[GROUP_ROWS, HEAD_DIM_P] the softmax-weighted sum of every split's partial output.
    Read from L2 (".cg": the other programs' stores are not in this SM's L1)."""
    dims = tl.arange(0, HEAD_DIM_P)
    m_max = tl.full((GROUP_ROWS,), float("-inf"), dtype=tl.float32)
    for s in range(num_splits):
        m = tl.load(
            part_max_ptr + parts + s, mask=row_mask, other=float("-inf"), cache_modifier=".cg"
        )
        m_max = tl.maximum(m_max, m)
    # A padding row's splits are all -inf: any finite max keeps its weights 0, not NaN.
    m_max = tl.where(m_max > float("-inf"), m_max, 0.0)
    total = tl.zeros((GROUP_ROWS,), dtype=tl.float32)
    out = tl.zeros((GROUP_ROWS, HEAD_DIM_P), dtype=tl.float32)
    for s in range(num_splits):
        m = tl.load(
            part_max_ptr + parts + s, mask=row_mask, other=float("-inf"), cache_modifier=".cg"
        )
        denom = tl.load(part_sum_ptr + parts + s, mask=row_mask, other=0.0, cache_modifier=".cg")
        acc = tl.load(
            part_out_ptr + (parts + s)[:, None] * HEAD_DIM + dims[None, :],
            mask=out_mask,
            other=0.0,
            cache_modifier=".cg",
        )
        weight = tl.exp2(m - m_max)  # 0 for an empty split (m = -inf)
        total += denom * weight
        out += acc * weight[:, None]
    return out / tl.where(total > 0, total, 1.0)[:, None]


# NOTE: stays all-zero between launches (the merging program re-zeroes its entry), so CUDA
# graphs replay it without a memset; allocated at the first launch of a size, which the
# eager warm-up step before each graph capture makes.
@functools.cache
def _arrival_counters(device: torch.device, num_entries: int) -> torch.Tensor:
    return torch.zeros(num_entries, dtype=torch.int32, device=device)


def default_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, num_sms: int) -> int:
    """Enough programs to fill the GPU, but no split shorter than MIN_TOKENS_PER_SPLIT
    of the longest context the block tables can hold (a shape, never a value)."""
    wanted = triton.cdiv(4 * num_sms, num_seqs * num_kv_heads)
    useful = triton.cdiv(max_context, MIN_TOKENS_PER_SPLIT)
    return max(1, min(wanted, useful, MAX_SPLITS))


def decode_attention(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]: one new token per sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim]
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    assert query.stride(2) == 1 and query.stride(1) == head_dim
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and block_tables.stride(1) == 1
    if num_splits is None:
        max_context = block_tables.shape[1] * block_size
        num_splits = default_num_splits(num_seqs, num_kv_heads, max_context, num_sms(query.device))
    group = num_heads // num_kv_heads
    head_dim_p = triton.next_power_of_2(head_dim)
    dot_dtype, precision = dot_operands(query.dtype)
    out = torch.empty(num_seqs, num_heads, head_dim, dtype=query.dtype, device=query.device)
    one_split = num_splits == 1
    part_out = part_max = part_sum = counters = out  # unused with one split
    if not one_split:
        part_out = torch.empty(
            num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=query.device
        )
        part_max = torch.empty(
            num_seqs, num_heads, num_splits, dtype=torch.float32, device=query.device
        )
        part_sum = torch.empty_like(part_max)
        counters = _arrival_counters(query.device, triton.next_power_of_2(num_seqs * num_kv_heads))
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        query,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        part_out,
        part_max,
        part_sum,
        counters,
        out,
        scale * LOG2E,
        query.stride(0),
        block_tables.stride(0),
        out.stride(0),
        num_splits,
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        GROUP_ROWS=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        HEAD_DIM_P=head_dim_p,
        BLOCK_SIZE=block_size,
        BLOCK_N=BLOCK_N,
        DOT_DTYPE=dot_dtype,
        PRECISION=precision,
        ONE_SPLIT=one_split,
        num_warps=4,
        num_stages=2,
    )
    return out
