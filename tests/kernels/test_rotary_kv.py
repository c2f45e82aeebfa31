"""The fused rotary + KV cache write against its twin (rotary_embedding, then
write_kv_cache): odd head counts and GQA, head_dim 64 and 128, every dtype, slots spread
over the pool's blocks with padding rows (-1) among them, and M-RoPE's per-token tables."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.rotary_kv import rotary_write_kv_cache
from tests.kernels.conftest import assert_close

NUM_BLOCKS, BLOCK_SIZE = 6, 4
# (num_heads, num_kv_heads): plain multi-head, GQA 3 with two KV heads, GQA 7 with one.
HEADS = [(5, 5), (6, 2), (7, 1)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Tokens of three sequences in scattered blocks; -1 marks padding rows (CUDA graphs).
SLOTS = [9, 10, 11, 20, -1, 3, 23, 0, -1]


def qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device):
    """Query, key and value as the model passes them: views into the fused qkv output."""
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(num_tokens, width, device=device).to(dtype)
    q, k, v = qkv.split(
        [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1
    )
    return (
        q.view(num_tokens, num_heads, head_dim),
        k.view(num_tokens, num_kv_heads, head_dim),
        v.view(num_tokens, num_kv_heads, head_dim),
    )


def check_against_twin(positions, cos, sin, num_heads, num_kv_heads, head_dim, dtype, device):
    num_tokens = positions.shape[0]
    query, key, value = qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device)
    shape = (NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, device=device).to(dtype)
    v_cache = torch.randn(shape, device=device).to(dtype)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    slots = torch.tensor(SLOTS[:num_tokens], device=device)
    args = (positions, query, key, value, cos, sin)
    expected_q = reference.rotary_write_kv_cache(*args, expected_k, expected_v, slots)
    ours_q = rotary_write_kv_cache(*args, k_cache, v_cache, slots)
    assert_close(ours_q, expected_q)
    assert_close(k_cache, expected_k)
    assert torch.equal(v_cache, expected_v)  # a copy: exact
    untouched = sorted(set(range(NUM_BLOCKS * BLOCK_SIZE)) - set(SLOTS[:num_tokens]))
    assert torch.equal(k_cache.flatten(0, 1)[untouched], expected_k.flatten(0, 1)[untouched])


@pytest.mark.parametrize("num_heads, num_kv_heads", HEADS)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_twin(device, num_heads, num_kv_heads, head_dim, dtype):
    torch.manual_seed(num_heads * head_dim)
    angles = torch.rand(64, head_dim // 2, device=device) * 6.3
    positions = torch.tensor([0, 1, 2, 63, 7, 40, 5, 5, 0], device=device)
    check_against_twin(
        positions, angles.cos(), angles.sin(), num_heads, num_kv_heads, head_dim, dtype, device
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_token_tables_of_mrope(device, dtype):
    """M-RoPE passes per-token cos/sin rows and each token's own row index."""
    torch.manual_seed(1)
    num_tokens, head_dim = 6, 64
    angles = torch.rand(num_tokens, head_dim // 2, device=device) * 6.3
    rows = torch.arange(num_tokens, device=device)
    check_against_twin(rows, angles.cos(), angles.sin(), 6, 2, head_dim, dtype, device)


def test_padding_rows_write_nothing(device):
    query = torch.ones(3, 2, 8, device=device)
    k_cache = torch.zeros(2, BLOCK_SIZE, 2, 8, device=device)
    v_cache = torch.zeros_like(k_cache)
    cos, sin = torch.ones(4, 4, device=device), torch.zeros(4, 4, device=device)
    positions = torch.zeros(3, dtype=torch.int64, device=device)
    slots = torch.tensor([5, -1, 2], device=device)
    out = rotary_write_kv_cache(positions, query, query, query, cos, sin, k_cache, v_cache, slots)
    assert torch.equal(out, query)  # cos 1, sin 0: the identity, padding rows included
    for cache in (k_cache, v_cache):
        assert cache.view(-1, 16).sum(-1).nonzero().flatten().tolist() == [2, 5]


def test_twin_without_the_slot_check_writes_the_same():
    """``negative_slots=False`` (the runner's eager steps, whose slots are all real) skips
    the twin's check and changes nothing else."""
    torch.manual_seed(0)
    query, key, value = qkv_views(5, 6, 2, 64, torch.float32, "cpu")
    angles = torch.randn(16, 32)
    positions = torch.tensor([3, 0, 15, 7, 7])
    slots = torch.tensor([9, 10, 11, 20, 3])
    caches = [torch.randn(NUM_BLOCKS, BLOCK_SIZE, 2, 64) for _ in range(2)]
    checked = [c.clone() for c in caches]
    args = (positions, query, key, value, angles.cos(), angles.sin())
    expected = reference.rotary_write_kv_cache(*args, *checked, slots)
    unchecked = reference.rotary_write_kv_cache(*args, *caches, slots, negative_slots=False)
    assert torch.equal(unchecked, expected)
    assert all(torch.equal(a, b) for a, b in zip(caches, checked))
