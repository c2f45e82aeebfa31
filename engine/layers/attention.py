"""Attention over the paged KV cache: rotates the step's new queries and keys and writes
the keys and values into the pool (one kernel), then attends every new query to its
sequence's whole context."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import kernels
from engine.layers.rotary import RotaryEmbedding


@dataclass(frozen=True)
class AttentionMetadata:
    """Where a step's tokens sit in the paged cache (built by the runner, one per step)."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: flat cache slot of each new token
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor  # [num_seqs] int32: context length after this step
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: prefix sums of new-token counts
    # seq_lens and query_start_loc as lists, where the runner has them: the CPU attention
    # loops over sequences on the host, and would otherwise read them back in every layer.
    host_lens: tuple[list[int], list[int]] | None = None
    # Whether slot_mapping may hold padding rows' negative slots (CUDA graphs' padding, the
    # kernel warm-up); the runner's eager steps hold none, and the CPU's KV write then
    # skips its check.
    negative_slots: bool = True


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, rotary: RotaryEmbedding):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.rotary = rotary  # NOTE: one module shared by every layer of a model
        # NOTE: bound by allocate_kv_cache once the pool is sized; not part of the checkpoint.
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(
        self,
        positions: torch.Tensor,  # [num_tokens], or [3, num_tokens] for M-RoPE
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim], not yet rotated
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], not yet rotated
        value: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, num_heads * head_dim]
        rows, cos, sin = self.rotary.tables(positions)
        query = kernels.rotary_write_kv_cache(
            rows,
            query,
            key,
            value,
            cos,
            sin,
            self.k_cache,
            self.v_cache,
            meta.slot_mapping,
            meta.negative_slots,
        )
        out = kernels.paged_attention(
            query,
            self.k_cache,
            self.v_cache,
            meta.block_tables,
            meta.seq_lens,
            meta.query_start_loc,
            self.scale,
            meta.host_lens,
        )
        return out.reshape(out.shape[0], -1)
