"""Torch reference twins of the kernels: the CPU path, and the oracle the Triton kernels
are tested against. Plain, readable tensor code; correctness over speed.

KV pool layout (per layer, for K and for V): ``[num_blocks, block_size, num_kv_heads,
head_dim]``. Token position ``p`` of a sequence lives in block ``block_table[p //
block_size]`` at row ``p % block_size``; its flat "slot" is ``block * block_size + row``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64
) -> None:
    """Store each new token's K and V at its slot."""
    num_kv_heads, head_dim = k_cache.shape[2:]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32, >= ceil(max(seq_lens) / bs) cols
    seq_lens: torch.Tensor,  # [num_seqs] int32: context length including the new tokens
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32: sequence i's queries start here
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal attention of each sequence's new tokens over its whole paged context.

    Sequence ``i`` has ``q_i = query_start_loc[i+1] - query_start_loc[i]`` new tokens at
    positions ``seq_lens[i] - q_i .. seq_lens[i] - 1`` (whose K/V are already written);
    decode is ``q_i = 1``, a prefill ``q_i = seq_lens[i]``, a chunked or prefix-cached
    prefill anything between. Grouped-query heads share their KV head.
    """
    num_tokens = query.shape[0]
    block_size, num_kv_heads, head_dim = k_cache.shape[1:]
    query_lens = query_start_loc[1:] - query_start_loc[:-1]
    max_seq_len = int(seq_lens.max())
    max_query_len = int(query_lens.max())

    key_pos = torch.arange(max_seq_len, device=query.device)
    blocks = block_tables[:, key_pos // block_size].to(torch.int64)
    slots = blocks * block_size + key_pos % block_size  # [num_seqs, max_seq_len]
    keys = k_cache.view(-1, num_kv_heads, head_dim)[slots]  # [num_seqs, max_seq_len, kv, d]
    values = v_cache.view(-1, num_kv_heads, head_dim)[slots]

    query_offsets = torch.arange(max_query_len, device=query.device)
    is_real_query = query_offsets < query_lens[:, None]  # [num_seqs, max_query_len]
    token_index = (query_start_loc[:-1, None] + query_offsets).clamp(max=num_tokens - 1)
    queries = query[token_index]  # [num_seqs, max_query_len, heads, d]
    query_pos = (seq_lens - query_lens)[:, None] + query_offsets
    mask = (key_pos <= query_pos[..., None]) & (key_pos < seq_lens[:, None, None])

    out = F.scaled_dot_product_attention(
        queries.transpose(1, 2).to(torch.float32),
        keys.transpose(1, 2).to(torch.float32),
        values.transpose(1, 2).to(torch.float32),
        attn_mask=mask[:, None],
        scale=scale,
        enable_gqa=True,
    )
    return out.transpose(1, 2)[is_real_query].to(query.dtype)
