"""The CPU paged attention (kernels/reference.py: one sequence at a time, its blocks
gathered, queries in chunks) against the math it replaced: every sequence's context
gathered slot by slot, padded to the batch's longest, one masked SDPA over the batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import reference

BLOCK_SIZE, NUM_BLOCKS = 4, 40


def padded_sdpa_attention(query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale):
    """The previous twin, kept as the oracle: slots gathered token by token, a
    [num_seqs, max_query_len, max_seq_len] causal mask, one SDPA in fp32."""
    num_tokens = query.shape[0]
    block_size, num_kv_heads, head_dim = k_cache.shape[1:]
    query_lens = query_start_loc[1:] - query_start_loc[:-1]
    key_pos = torch.arange(int(seq_lens.max()))
    blocks = block_tables[:, key_pos // block_size].to(torch.int64)
    slots = blocks * block_size + key_pos % block_size
    keys = k_cache.view(-1, num_kv_heads, head_dim)[slots]
    values = v_cache.view(-1, num_kv_heads, head_dim)[slots]
    query_offsets = torch.arange(int(query_lens.max()))
    is_real_query = query_offsets < query_lens[:, None]
    token_index = (query_start_loc[:-1, None] + query_offsets).clamp(max=num_tokens - 1)
    query_pos = (seq_lens - query_lens)[:, None] + query_offsets
    mask = (key_pos <= query_pos[..., None]) & (key_pos < seq_lens[:, None, None])
    out = F.scaled_dot_product_attention(
        query[token_index].transpose(1, 2).float(),
        keys.transpose(1, 2).float(),
        values.transpose(1, 2).float(),
        attn_mask=mask[:, None],
        scale=scale,
        enable_gqa=True,
    )
    return out.transpose(1, 2)[is_real_query].to(query.dtype)


def batch(
    seq_lens: list[int],
    query_lens: list[int],
    num_heads: int,
    dtype: torch.dtype,
    num_kv_heads: int = 2,
    head_dim: int = 8,
    block_size: int = BLOCK_SIZE,
    pool_blocks: int = NUM_BLOCKS,
):
    """Sequences on scattered blocks of one pool (unused blocks NaN: reading one poisons
    the output), each with its last ``query_lens[i]`` positions as new queries."""
    shape = (pool_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = torch.randn(shape), torch.randn(shape)
    order = torch.randperm(pool_blocks).tolist()
    rows = []
    for seq_len in seq_lens:
        num_blocks = -(-seq_len // block_size)
        rows.append(order[:num_blocks])
        order = order[num_blocks:]
    used = {b for row in rows for b in row}
    unused = [b for b in range(pool_blocks) if b not in used]
    k_cache[unused], v_cache[unused] = float("nan"), float("nan")
    width = max(len(row) for row in rows)
    padding = sorted(used)[0]  # a real block: the old math reads padding columns too
    block_tables = torch.tensor([row + [padding] * (width - len(row)) for row in rows])
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    query = torch.randn(starts[-1], num_heads, head_dim)
    return (
        query.to(dtype),
        k_cache.to(dtype),
        v_cache.to(dtype),
        block_tables.to(torch.int32),
        torch.tensor(seq_lens, dtype=torch.int32),
        torch.tensor(starts, dtype=torch.int32),
        head_dim**-0.5,
    )


CASES = {
    # one token each, odd lengths across block edges
    "decode": ([1, 7, 13, 4, 33], [1, 1, 1, 1, 1]),
    # a fresh prompt, a cached prefix extended, a middle chunk, a decode row, in one batch
    "mixed": ([9, 17, 23, 5], [9, 6, 11, 1]),
    # decodes alike enough in length to be attended as one padded batch
    "alike decodes": ([13, 9, 16, 11, 12], [1, 1, 1, 1, 1]),
}


def test_which_decodes_are_batched():
    assert reference._alike_decodes(*CASES["alike decodes"][0:1], [0, 1, 2, 3, 4, 5])
    assert not reference._alike_decodes([1, 7, 13, 4, 33], [0, 1, 2, 3, 4, 5])  # padding 2.8x
    assert not reference._alike_decodes([9, 17], [0, 9, 10])  # a prefill
    assert not reference._alike_decodes([9], [0, 1])  # one sequence: nothing to batch


@pytest.mark.parametrize("num_heads", [2, 14])
def test_batched_decodes_read_nothing_behind_a_table_end(num_heads):
    """Padding columns pointing at a NaN block, and the NaN-free rows of each sequence's
    last block past its length, leave the batched decode's output as the oracle's."""
    torch.manual_seed(4)
    query, k_cache, v_cache, block_tables, *rest = batch(
        *CASES["alike decodes"], num_heads, torch.float32
    )
    expected = padded_sdpa_attention(query, k_cache, v_cache, block_tables, *rest)
    nan_block = int(k_cache.isnan().flatten(1).any(1).nonzero()[0])
    lens = rest[0].tolist()
    for i, seq_len in enumerate(lens):
        block_tables[i, -(-seq_len // BLOCK_SIZE) :] = nan_block
    ours = reference.paged_attention(query, k_cache, v_cache, block_tables, *rest)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("num_heads", [2, 6, 14])  # GQA groups 1, 3, 7 over 2 KV heads
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_padded_sdpa(case, num_heads, dtype):
    torch.manual_seed(num_heads)
    args = batch(*CASES[case], num_heads, dtype)
    ours = reference.paged_attention(*args)
    assert ours.dtype == dtype and not ours.isnan().any()
    atol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: one rounding of the output
    torch.testing.assert_close(ours, padded_sdpa_attention(*args), atol=atol, rtol=atol)


@pytest.mark.parametrize("max_scores", [1, 14 * 23 * 4])
def test_query_chunks(monkeypatch, max_scores):
    """Queries split into chunks (one row each; four rows) give the same attention,
    the causal mask following each chunk's positions."""
    torch.manual_seed(1)
    args = batch(*CASES["mixed"], 14, torch.float32)
    expected = padded_sdpa_attention(*args)
    monkeypatch.setattr(reference, "MAX_SCORES_PER_CHUNK", max_scores)
    torch.testing.assert_close(reference.paged_attention(*args), expected, atol=1e-5, rtol=1e-5)


def test_strided_queries():
    """Queries as the model passes them: a view into the fused qkv output."""
    torch.manual_seed(2)
    query, *rest = batch(*CASES["mixed"], 6, torch.float32)
    qkv = torch.randn(query.shape[0], 10, query.shape[2])
    qkv[:, :6] = query
    strided = qkv[:, :6]
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        reference.paged_attention(strided, *rest), padded_sdpa_attention(query, *rest)
    )


@pytest.mark.parametrize("case", list(CASES))
def test_host_lens_give_the_same_attention(case):
    """The lengths as lists (what the runner passes) stand in for the tensors, which are
    zeroed here: only the lists can give them."""
    torch.manual_seed(3)
    args = batch(*CASES[case], 14, torch.float32)
    expected = reference.paged_attention(*args)
    query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale = args
    host_lens = (seq_lens.tolist(), query_start_loc.tolist())
    zeroed = (torch.zeros_like(seq_lens), torch.zeros_like(query_start_loc))
    ours = reference.paged_attention(
        query, k_cache, v_cache, block_tables, *zeroed, scale, host_lens
    )
    assert torch.equal(ours, expected)
