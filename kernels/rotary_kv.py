"""Rotary embedding and the KV cache write in one launch: each token's queries are
rotated into a new tensor, its keys rotated straight into their cache slot and its values
copied beside them, so the rotated keys never make a round trip through memory."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.rotary import load_angles, rotate_heads


@triton.jit
def _copy_heads(
    src_ptr, dst_ptr, num_heads, HEAD_DIM: tl.constexpr, HEADS_P: tl.constexpr, HALF_P: tl.constexpr
):
    """One token's packed [num_heads, HEAD_DIM] heads, in rotate_heads' tiling."""
    heads = tl.arange(0, HEADS_P)
    half = tl.arange(0, HALF_P)
    mask = (heads < num_heads)[:, None] & (half < HEAD_DIM // 2)[None, :]
    offs = heads[:, None] * HEAD_DIM + half[None, :]
    out_dtype = dst_ptr.dtype.element_ty
    for second_half in tl.static_range(2):
        at = offs + second_half * (HEAD_DIM // 2)
        tl.store(dst_ptr + at, tl.load(src_ptr + at, mask=mask).to(out_dtype), mask=mask)


@triton.jit
def _rotary_write_kv_kernel(
    positions_ptr,  # [num_tokens] int64: the row of cos/sin each token takes
    query_ptr,  # [num_tokens, num_heads, head_dim], rows stride_q apart
    key_ptr,  # [num_tokens, num_kv_heads, head_dim], rows stride_k apart
    value_ptr,  # [num_tokens, num_kv_heads, head_dim], rows stride_v apart
    cos_ptr,  # [num_rows, head_dim // 2] fp32
    sin_ptr,
    slot_mapping_ptr,  # [num_tokens] int64
    query_out_ptr,  # [num_tokens, num_heads, head_dim] contiguous
    k_cache_ptr,  # [num_slots, num_kv_heads, head_dim]
    v_cache_ptr,
    stride_q,
    stride_k,
    stride_v,
    num_heads,
    num_kv_heads,
    HEAD_DIM: tl.constexpr,
    HEADS_P: tl.constexpr,
    KV_HEADS_P: tl.constexpr,
    HALF_P: tl.constexpr,
):
    token = tl.program_id(0)
    position = tl.load(positions_ptr + token)
    cos, sin = load_angles(cos_ptr, sin_ptr, position, HEAD_DIM, HALF_P)
    query_out = query_out_ptr + token * num_heads * HEAD_DIM
    rotate_heads(
        query_ptr + token * stride_q, query_out, cos, sin, num_heads, HEAD_DIM, HEADS_P, HALF_P
    )
    slot = tl.load(slot_mapping_ptr + token)
    # NOTE: a negative slot marks a padding row of a captured CUDA graph: its query is
    # rotated (and ignored), nothing is written to the cache.
    if slot >= 0:
        row = slot.to(tl.int64) * num_kv_heads * HEAD_DIM
        rotate_heads(
            key_ptr + token * stride_k,
            k_cache_ptr + row,
            cos,
            sin,
            num_kv_heads,
            HEAD_DIM,
            KV_HEADS_P,
            HALF_P,
        )
        _copy_heads(
            value_ptr + token * stride_v,
            v_cache_ptr + row,
            num_kv_heads,
            HEAD_DIM,
            KV_HEADS_P,
            HALF_P,
        )


def rotary_write_kv_cache(
    positions: torch.Tensor,  # [num_tokens] int64: each token's row of cos and sin
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,
    cos: torch.Tensor,  # [num_rows, head_dim // 2] fp32
    sin: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; negative slots are skipped
) -> torch.Tensor:  # the rotated queries, [num_tokens, num_heads, head_dim]
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    # Rows may be strided (views into the fused qkv output); heads and dims must be packed.
    for t in (query, key, value):
        assert t.stride(2) == 1 and t.stride(1) == head_dim
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.shape[2:] == (num_kv_heads, head_dim)
    assert cos.is_contiguous() and sin.is_contiguous()
    # NOTE: the twin rounds the rotated keys to key's dtype before the cache's; one
    # rounding here is the same only when the two match (as the engine allocates them).
    assert key.dtype == k_cache.dtype and value.dtype == v_cache.dtype
    query_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens:
        _rotary_write_kv_kernel[(num_tokens,)](
            positions,
            query,
            key,
            value,
            cos,
            sin,
            slot_mapping,
            query_out,
            k_cache,
            v_cache,
            query.stride(0),
            key.stride(0),
            value.stride(0),
            num_heads,
            num_kv_heads,
            HEAD_DIM=head_dim,
            HEADS_P=triton.next_power_of_2(num_heads),
            KV_HEADS_P=triton.next_power_of_2(num_kv_heads),
            HALF_P=triton.next_power_of_2(head_dim // 2),
        )
    return query_out
