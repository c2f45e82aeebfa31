"""Paged attention on the GPU: the decode kernel when every sequence brings one new token,
the prefill / extend kernel otherwise."""

from __future__ import annotations

import torch

from kernels.paged_decode import decode_attention
from kernels.paged_prefill import prefill_attention


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    # NOTE: every sequence has at least one new token, so as many tokens as sequences
    # means one each; deciding from shapes keeps decode free of host syncs.
    if query.shape[0] == seq_lens.shape[0]:
        return decode_attention(query, k_cache, v_cache, block_tables, seq_lens, scale)
    return prefill_attention(
        query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale
    )
