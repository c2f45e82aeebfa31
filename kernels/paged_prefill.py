"""Prefill / extend attention over the paged KV cache: causal, variable length.

Each sequence's new tokens attend to its whole context, earlier tokens included, read from
the cache through the block table, so prefix-cached and chunked prefills take the same
path as fresh ones. A program owns BLOCK_Q consecutive new tokens of one sequence times the
query heads of one KV head (GQA rows share every K/V load). The grid is sized from shapes
alone, ``num_tokens // BLOCK_Q + num_seqs`` programs per KV head, and each program finds its
sequence by binary search over ``query_start_loc`` (no host sync for the longest query).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.triton_utils import dot_operands

LOG2E = math.log2(math.e)
BLOCK_N = 32  # context tokens per inner step
ROWS_PER_PROGRAM = 64  # BLOCK_Q * the padded query-head group


@triton.jit
def _prefill_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim], rows stride_qt apart
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache_ptr,
    block_tables_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32
    query_start_loc_ptr,  # [num_seqs + 1] int32
    out_ptr,  # [num_tokens, num_heads, head_dim]
    qk_scale,  # softmax scale * log2(e)
    num_seqs,
    stride_qt,
    stride_bt,
    stride_ot,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_P: tl.constexpr,  # GROUP padded to a power of two
    BLOCK_Q: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    # Sequence i's programs start at query_start_loc[i] // BLOCK_Q + i: find the last such
    # start <= pid.
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid <= pid:
            lo = mid + 1
        else:
            hi = mid
    seq = lo - 1
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    q_block = pid - (q_start // BLOCK_Q + seq)
    if q_block * BLOCK_Q < q_len:
        seq_len = tl.load(seq_lens_ptr + seq)
        context_len = seq_len - q_len

        rows = tl.arange(0, BLOCK_Q * GROUP_P)
        token = q_block * BLOCK_Q + rows // GROUP_P  # within the sequence's new tokens
        head = kv_head * GROUP + rows % GROUP_P
        row_mask = (token < q_len) & (rows % GROUP_P < GROUP)
        dims = tl.arange(0, HEAD_DIM_P)
        dim_mask = dims < HEAD_DIM
        q_offs = (q_start + token)[:, None] * stride_qt + head[:, None] * HEAD_DIM + dims[None, :]
        q_mask = row_mask[:, None] & dim_mask[None, :]
        q = tl.load(query_ptr + q_offs, mask=q_mask, other=0.0).to(DOT_DTYPE)
        q_pos = context_len + token

        m = tl.full((BLOCK_Q * GROUP_P,), float("-inf"), dtype=tl.float32)
        denom = tl.zeros((BLOCK_Q * GROUP_P,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_Q * GROUP_P, HEAD_DIM_P), dtype=tl.float32)
        kv_end = tl.minimum(seq_len, context_len + (q_block + 1) * BLOCK_Q)
        for kv_start in range(0, kv_end, BLOCK_N):
            pos = kv_start + tl.arange(0, BLOCK_N)
            pos_mask = pos < kv_end
            block = tl.load(
                block_tables_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=pos_mask, other=0
            )
            slot = block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE
            kv_offs = (slot * NUM_KV_HEADS + kv_head)[:, None] * HEAD_DIM + dims[None, :]
            kv_mask = pos_mask[:, None] & dim_mask[None, :]
            k = tl.load(k_cache_ptr + kv_offs, mask=kv_mask, other=0.0).to(DOT_DTYPE)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            causal = pos_mask[None, :] & (pos[None, :] <= q_pos[:, None])
            scores = tl.where(causal, scores, float("-inf"))
            # Position 0 is in the first step and visible to every row, so m stays finite.
            m_new = tl.maximum(m, tl.max(scores, 1))
            p = tl.exp2(scores - m_new[:, None])
            alpha = tl.exp2(m - m_new)
            denom = denom * alpha + tl.sum(p, 1)
            v = tl.load(v_cache_ptr + kv_offs, mask=kv_mask, other=0.0).to(DOT_DTYPE)
            acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision=PRECISION)
            m = m_new

        out = acc / denom[:, None]
        o_offs = (q_start + token)[:, None] * stride_ot + head[:, None] * HEAD_DIM + dims[None, :]
        tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


def prefill_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_seqs = seq_lens.shape[0]
    assert query.stride(2) == 1 and query.stride(1) == head_dim
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and block_tables.stride(1) == 1
    group = num_heads // num_kv_heads
    group_p = triton.next_power_of_2(group)
    block_q = max(1, ROWS_PER_PROGRAM // group_p)  # >= 16 rows either way (tl.dot's minimum)
    dot_dtype, precision = dot_operands(query.dtype)
    out = torch.empty_like(query, memory_format=torch.contiguous_format)
    grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    _prefill_kernel[grid](
        query,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        out,
        scale * LOG2E,
        num_seqs,
        query.stride(0),
        block_tables.stride(0),
        out.stride(0),
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        GROUP_P=group_p,
        BLOCK_Q=block_q,
        HEAD_DIM=head_dim,
        HEAD_DIM_P=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size,
        BLOCK_N=BLOCK_N,
        DOT_DTYPE=dot_dtype,
        PRECISION=precision,
        num_warps=8,  # 4 spill registers at head_dim 128 (ptxas -v, sm_80 / sm_87)
        num_stages=2,
    )
    return out
