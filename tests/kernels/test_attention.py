"""Paged attention against its torch twin (the KV write: test_rotary_kv.py): GQA ratios
1, 4 and 8, block tables with holes (scattered blocks, padding) and prefix blocks shared between
sequences, decode split across the context, and prefills that extend a cached prefix."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.attention import paged_attention
from kernels.paged_decode import decode_attention
from tests.kernels.conftest import assert_close

NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS = 24, 4, 2
CASES = [(1, 32, torch.float32), (4, 40, torch.float16), (8, 32, torch.bfloat16)]


def kv_pool(head_dim: int, dtype, device, table: list[list[int]]):
    """A random pool whose blocks outside every table are NaN: reading them poisons the output."""
    shape = (NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, head_dim)
    k_cache, v_cache = torch.randn(shape), torch.randn(shape)
    unused = sorted(set(range(NUM_BLOCKS)) - {b for row in table for b in row})
    k_cache[unused] = float("nan")
    v_cache[unused] = float("nan")
    return k_cache.to(device, dtype), v_cache.to(device, dtype)


def tables(rows: list[list[int]], device) -> torch.Tensor:
    width = max(len(row) for row in rows)
    padded = [row + [0] * (width - len(row)) for row in rows]  # 0 is in use: never NaN
    return torch.tensor(padded, dtype=torch.int32, device=device)


# Sequences 0 and 1 share their first two blocks (a cached prefix); 2 is alone; 3 is one token.
BLOCK_ROWS = [[5, 9, 0, 17], [5, 9, 3], [12, 1, 20, 7, 14, 2], [11]]


@pytest.mark.parametrize("group, head_dim, dtype", CASES)
@pytest.mark.parametrize("num_splits", [None, 1, 3])  # 3: all but the first split empty
def test_decode(device, group, head_dim, dtype, num_splits):
    torch.manual_seed(group)
    k_cache, v_cache = kv_pool(head_dim, dtype, device, BLOCK_ROWS)
    block_tables = tables(BLOCK_ROWS, device)
    seq_lens = torch.tensor([15, 10, 23, 1], dtype=torch.int32, device=device)
    query = torch.randn(4, NUM_KV_HEADS * group, head_dim, device=device).to(dtype)
    query_start_loc = torch.arange(5, dtype=torch.int32, device=device)
    scale = head_dim**-0.5
    expected = reference.paged_attention(
        query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale
    )
    for _ in range(2):  # the second launch finds the arrival counters the first re-zeroed
        ours = decode_attention(query, k_cache, v_cache, block_tables, seq_lens, scale, num_splits)
        assert_close(ours, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_merges_splits_of_long_contexts(device, dtype):
    """Contexts of 90 and 33 tokens in three splits of 32 (BLOCK_N): three real partial
    results, and two and an empty one; the last split of each to finish merges them."""
    torch.manual_seed(3)
    rows = [list(range(23, 0, -1)), [4, 0, 19, 8, 13, 2, 21, 6, 10]]
    k_cache, v_cache = kv_pool(32, dtype, device, rows)
    block_tables = tables(rows, device)
    seq_lens = torch.tensor([90, 33], dtype=torch.int32, device=device)
    query = torch.randn(2, NUM_KV_HEADS * 4, 32, device=device).to(dtype)
    starts = torch.arange(3, dtype=torch.int32, device=device)
    args = (query, k_cache, v_cache, block_tables, seq_lens)
    expected = reference.paged_attention(*args, starts, 0.3)
    for _ in range(2):  # the second launch finds the arrival counters the first re-zeroed
        assert_close(decode_attention(*args, 0.3, num_splits=3), expected)


@pytest.mark.parametrize("group, head_dim, dtype", CASES)
def test_prefill_and_extend(device, group, head_dim, dtype):
    """A fresh prompt, a prompt whose first 8 tokens are a cached prefix, a 1-token
    extend, and a middle chunk of a chunked prefill, in one batch."""
    torch.manual_seed(group)
    k_cache, v_cache = kv_pool(head_dim, dtype, device, BLOCK_ROWS)
    block_tables = tables(BLOCK_ROWS, device)
    query_lens = [15, 2, 20, 1]
    seq_lens = torch.tensor([15, 10, 23, 1], dtype=torch.int32, device=device)
    query_start_loc = torch.tensor([0, 15, 17, 37, 38], dtype=torch.int32, device=device)
    query = torch.randn(sum(query_lens), NUM_KV_HEADS * group, head_dim, device=device).to(dtype)
    scale = head_dim**-0.5
    args = (query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale)
    assert_close(paged_attention(*args), reference.paged_attention(*args))


def test_strided_queries(device):
    """Queries as the model passes them: a view into the fused qkv output."""
    torch.manual_seed(0)
    head_dim, num_heads = 32, 4
    k_cache, v_cache = kv_pool(head_dim, torch.float32, device, BLOCK_ROWS)
    block_tables = tables(BLOCK_ROWS[:2], device)
    seq_lens = torch.tensor([15, 10], dtype=torch.int32, device=device)
    qkv = torch.randn(6, (num_heads + 2 * NUM_KV_HEADS) * head_dim, device=device)
    query = qkv[:, : num_heads * head_dim].view(6, num_heads, head_dim)
    for query_start_loc in ([0, 1, 2], [0, 4, 6]):  # decode, then prefill
        rows = query[: query_start_loc[-1]]
        starts = torch.tensor(query_start_loc, dtype=torch.int32, device=device)
        args = (rows, k_cache, v_cache, block_tables, seq_lens, starts, 0.2)
        assert_close(paged_attention(*args), reference.paged_attention(*args))
