"""The KV pool: per layer, a K and a V tensor of ``[num_blocks, block_size, num_kv_heads,
head_dim]``, sized from a memory budget and bound to the model's attention layers."""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.layers.attention import PagedAttention
from engine.memory import GIB

logger = logging.getLogger(__name__)


class KVCache:
    def __init__(
        self,
        layers: list[PagedAttention],
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.num_blocks = num_blocks
        self.block_size = block_size
        for layer in layers:
            shape = (num_blocks, block_size, layer.num_kv_heads, layer.head_dim)
            layer.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.v_cache = torch.zeros(shape, dtype=dtype, device=device)


def bytes_per_block(layers: list[PagedAttention], block_size: int, dtype: torch.dtype) -> int:
    per_token = sum(2 * layer.num_kv_heads * layer.head_dim for layer in layers)
    return per_token * block_size * dtype.itemsize


def num_blocks_for_budget(
    model: nn.Module,
    budget_bytes: int,
    block_size: int,
    dtype: torch.dtype,
    max_blocks_useful: int,
) -> int:
    """How many blocks fit the budget, capped at what the scheduler could ever use."""
    per_block = bytes_per_block(model.attention_layers(), block_size, dtype)
    num_blocks = min(budget_bytes // per_block, max_blocks_useful)
    logger.info(
        "KV cache: %d blocks of %d tokens = %d tokens (%.2f GiB of a %.2f GiB budget)",
        num_blocks,
        block_size,
        num_blocks * block_size,
        num_blocks * per_block / GIB,
        budget_bytes / GIB,
    )
    return num_blocks
