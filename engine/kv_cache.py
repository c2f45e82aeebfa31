"""The KV pool: per layer, a K and a V tensor of ``[num_blocks, block_size, num_kv_heads,
head_dim]``, sized from a memory budget and bound to the model's attention layers."""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.config import EngineConfig
from engine.errors import EngineError
from engine.layers.attention import PagedAttention
from engine.memory import GIB, kv_budget_bytes
from engine.model_info import max_context_len

logger = logging.getLogger(__name__)


def allocate_kv_cache(
    model: nn.Module,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Give each attention layer of ``model`` its K and V pools (zeros)."""
    for layer in model.attention_layers():
        shape = (num_blocks, block_size, layer.num_kv_heads, layer.head_dim)
        layer.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        layer.v_cache = torch.zeros(shape, dtype=dtype, device=device)


def bytes_per_block(layers: list[PagedAttention], block_size: int, dtype: torch.dtype) -> int:
    per_token = sum(2 * layer.num_kv_heads * layer.head_dim for layer in layers)
    return per_token * block_size * dtype.itemsize


def size_kv_cache(
    model: nn.Module,
    text_config,
    config: EngineConfig,
    dtype: torch.dtype,
    device: torch.device,
    other_bytes: int = 0,
) -> tuple[int, int]:
    """``(max_model_len, num_blocks)``: the blocks that fit the budget (less
    ``other_bytes`` the engine also keeps, such as the image-feature cache, when the
    budget comes from free memory), capped at what the scheduler could ever use; the
    context shrinks to what the pool holds."""
    max_model_len = max_context_len(text_config, config.max_model_len)
    block_size = config.block_size
    budget = kv_budget_bytes(config.kv_cache_memory, config.kv_cache_fraction, device)
    if config.kv_cache_memory is None:
        budget -= other_bytes
    per_block = bytes_per_block(model.attention_layers(), block_size, dtype)
    max_useful = config.max_num_seqs * -(-max_model_len // block_size)
    num_blocks = min(max(budget, 0) // per_block, max_useful)
    logger.info(
        "KV cache: %d blocks of %d tokens = %d tokens (%.2f GiB of a %.2f GiB budget)",
        num_blocks,
        block_size,
        num_blocks * block_size,
        num_blocks * per_block / GIB,
        budget / GIB,
    )
    if num_blocks < 1:
        raise EngineError(f"the KV cache budget ({budget} bytes) holds no block at all")
    if num_blocks * block_size < max_model_len:
        logger.warning(
            "the KV cache holds %d tokens: max_model_len lowered from %d",
            num_blocks * block_size,
            max_model_len,
        )
        max_model_len = num_blocks * block_size
    return max_model_len, num_blocks
