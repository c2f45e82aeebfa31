"""Rotary position embedding of the queries and keys of each token in one launch
(the "rotate_half" convention: the two halves of a head are the pair rotated)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def load_angles(cos_ptr, sin_ptr, position, HEAD_DIM: tl.constexpr, HALF_P: tl.constexpr):
    """Row ``position`` of the [*, HEAD_DIM // 2] cos and sin tables, fp32."""
    half = tl.arange(0, HALF_P)
    mask = half < HEAD_DIM // 2
    cos = tl.load(cos_ptr + position * (HEAD_DIM // 2) + half, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + position * (HEAD_DIM // 2) + half, mask=mask, other=0.0)
    return cos, sin


@triton.jit
def rotate_heads(
    src_ptr,  # one token's heads, packed: [num_heads, HEAD_DIM]
    dst_ptr,  # where the rotated heads go, packed the same way
    cos,
    sin,
    num_heads,
    HEAD_DIM: tl.constexpr,
    HEADS_P: tl.constexpr,
    HALF_P: tl.constexpr,
):
    heads = tl.arange(0, HEADS_P)
    half = tl.arange(0, HALF_P)
    mask = (heads < num_heads)[:, None] & (half < HEAD_DIM // 2)[None, :]
    offs = heads[:, None] * HEAD_DIM + half[None, :]
    x1 = tl.load(src_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src_ptr + offs + HEAD_DIM // 2, mask=mask, other=0.0).to(tl.float32)
    out_dtype = dst_ptr.dtype.element_ty
    tl.store(dst_ptr + offs, (x1 * cos[None, :] - x2 * sin[None, :]).to(out_dtype), mask=mask)
    tl.store(
        dst_ptr + offs + HEAD_DIM // 2,
        (x2 * cos[None, :] + x1 * sin[None, :]).to(out_dtype),
        mask=mask,
    )


@triton.jit
def _rotary_kernel(
    positions_ptr,  # [num_tokens] int64
    query_ptr,  # [num_tokens, num_heads, head_dim], rows stride_q apart
    key_ptr,  # [num_tokens, num_kv_heads, head_dim], rows stride_k apart
    cos_ptr,  # [max_position, head_dim // 2] fp32
    sin_ptr,
    query_out_ptr,  # contiguous
    key_out_ptr,
    stride_q,
    stride_k,
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
    rotate_heads(
        query_ptr + token * stride_q,
        query_out_ptr + token * num_heads * HEAD_DIM,
        cos,
        sin,
        num_heads,
        HEAD_DIM,
        HEADS_P,
        HALF_P,
    )
    rotate_heads(
        key_ptr + token * stride_k,
        key_out_ptr + token * num_kv_heads * HEAD_DIM,
        cos,
        sin,
        num_kv_heads,
        HEAD_DIM,
        KV_HEADS_P,
        HALF_P,
    )


def rotary_embedding(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    cos: torch.Tensor,  # [max_position, head_dim // 2] fp32
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    # Rows may be strided (views into the fused qkv output); heads and dims must be packed.
    assert query.stride(2) == 1 and query.stride(1) == head_dim
    assert key.stride(2) == 1 and key.stride(1) == head_dim
    assert cos.is_contiguous() and sin.is_contiguous()
    query_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    key_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            positions,
            query,
            key,
            cos,
            sin,
            query_out,
            key_out,
            query.stride(0),
            key.stride(0),
            num_heads,
            num_kv_heads,
            HEAD_DIM=head_dim,
            HEADS_P=triton.next_power_of_2(num_heads),
            KV_HEADS_P=triton.next_power_of_2(num_kv_heads),
            HALF_P=triton.next_power_of_2(head_dim // 2),
        )
    return query_out, key_out
