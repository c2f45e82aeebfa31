"""The KV cache write: each new token's K and V rows into their flat cache slots."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    key_ptr,  # [num_tokens, num_kv_heads, head_dim], rows stride_key apart
    value_ptr,
    k_cache_ptr,  # [num_slots, num_kv_heads * head_dim]
    v_cache_ptr,
    slot_mapping_ptr,  # [num_tokens] int64
    stride_key,
    stride_value,
    ROW: tl.constexpr,  # num_kv_heads * head_dim
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token)
    # NOTE: a negative slot marks a padding row of a captured CUDA graph: nothing to write.
    if slot >= 0:
        offs = tl.arange(0, BLOCK)
        mask = offs < ROW
        key = tl.load(key_ptr + token * stride_key + offs, mask=mask)
        value = tl.load(value_ptr + token * stride_value + offs, mask=mask)
        row = slot.to(tl.int64) * ROW
        tl.store(k_cache_ptr + row + offs, key.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + row + offs, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; negative slots are skipped
) -> None:
    num_tokens = key.shape[0]
    row = k_cache.shape[2] * k_cache.shape[3]
    # Rows may be strided (views into the fused qkv output); heads and dims must be packed.
    assert key.stride(1) == key.shape[2] and key.stride(2) == 1
    assert value.stride(1) == value.shape[2] and value.stride(2) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    if num_tokens == 0:
        return
    _write_kv_kernel[(num_tokens,)](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        key.stride(0),
        value.stride(0),
        ROW=row,
        BLOCK=triton.next_power_of_2(row),
    )
