"""Block allocation, reference counts and the prefix cache (pure Python, no model)."""

from __future__ import annotations

import pytest

from engine.block_manager import BlockManager
from engine.sampling import SamplingParams
from engine.sequence import Sequence

BS = 4


def make_seq(tokens: list[int], images: dict[bytes, int] | None = None) -> Sequence:
    """``images``: each image's key -> its first position; an image takes two positions."""
    images = images or {}
    positions = [p for first in images.values() for p in (first, first + 1)]
    return Sequence("r", tokens, SamplingParams(), BS, list(images), positions, list(images))


def compute_all(bm: BlockManager, seq: Sequence) -> None:
    """Allocate and mark every token computed, as a finished prefill would."""
    bm.allocate(seq, len(seq), bm.match_prefix(seq) if not seq.block_table else None)
    seq.num_computed_tokens = len(seq)
    bm.cache_full_blocks(seq)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, BS)
    seq = make_seq(list(range(10)))
    assert bm.num_blocks_needed(seq, 10) == 3
    bm.allocate(seq, 10)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    bm.allocate(seq, 13)  # growing past a block boundary takes one more
    assert len(seq.block_table) == 4
    bm.free(seq)
    assert bm.num_free_blocks == 8 and seq.block_table == []


def test_can_allocate_refuses_more_than_the_pool():
    bm = BlockManager(2, BS)
    seq = make_seq(list(range(9)))
    assert not bm.can_allocate(seq, 9)
    assert bm.can_allocate(seq, 8)


def test_prefix_hit_shares_blocks_and_counts_tokens():
    bm = BlockManager(16, BS)
    first = make_seq(list(range(14)))
    compute_all(bm, first)
    second = make_seq(list(range(12)) + [99, 98])
    hits = bm.match_prefix(second)
    assert hits == first.block_table[:3]
    bm.allocate(second, len(second), hits)
    assert second.num_cached_tokens == second.num_computed_tokens == 12
    assert bm.blocks[hits[0]].ref_count == 2
    assert bm.num_prefix_hit_tokens == 12
    assert bm.num_prefix_query_tokens == 28


def test_last_token_is_never_served_from_cache():
    bm = BlockManager(16, BS)
    first = make_seq(list(range(8)))
    compute_all(bm, first)
    # Exactly two full blocks again: only the first may hit, so the last token computes.
    assert bm.match_prefix(make_seq(list(range(8)))) == first.block_table[:1]


def test_freed_blocks_stay_cached_until_reused():
    bm = BlockManager(4, BS)
    first = make_seq(list(range(9)))
    compute_all(bm, first)
    bm.free(first)
    assert bm.num_free_blocks == 4
    again = make_seq(list(range(9)))
    hits = bm.match_prefix(again)
    assert len(hits) == 2
    assert bm.num_blocks_needed(again, 9, hits) == 3  # two revived from the free queue + one
    # Filling the pool with other tokens evicts the cached blocks.
    other = make_seq([7] * 16)
    compute_all(bm, other)
    bm.free(other)
    assert bm.match_prefix(make_seq(list(range(9)))) == []


def test_image_keys_separate_equal_tokens_from_the_block_they_appear_in():
    bm = BlockManager(8, BS)
    tokens = list(range(13))
    compute_all(bm, make_seq(tokens, {b"image-a": 5}))
    assert len(bm.match_prefix(make_seq(tokens, {b"image-b": 5}))) == 1  # block 0 holds no image
    assert len(bm.match_prefix(make_seq(tokens, {b"image-a": 5}))) == 3
    # An image that straddles blocks 0 and 1 keys both.
    compute_all(bm, make_seq(tokens, {b"image-c": 3}))
    assert bm.match_prefix(make_seq(tokens, {b"image-d": 3})) == []


def test_an_image_added_later_keeps_the_earlier_blocks_shared():
    bm = BlockManager(8, BS)
    tokens = list(range(13))
    compute_all(bm, make_seq(tokens, {b"image-a": 1}))
    later = make_seq(tokens, {b"image-a": 1, b"image-b": 9})
    assert len(bm.match_prefix(later)) == 2  # blocks 0 and 1; block 2 shows image-b
    swapped = make_seq(tokens, {b"image-b": 1, b"image-a": 9})
    assert bm.match_prefix(swapped) == []


def test_decoded_tokens_extend_the_cache():
    bm = BlockManager(8, BS)
    seq = make_seq([1, 2, 3])
    compute_all(bm, seq)
    for token in [4, 5, 6]:
        seq.append_token(token)
        bm.allocate(seq, len(seq))
        seq.num_computed_tokens = len(seq)
        bm.cache_full_blocks(seq)
    assert len(bm.match_prefix(make_seq([1, 2, 3, 4, 5, 6, 0]))) == 1


def test_disabled_prefix_caching_never_hits():
    bm = BlockManager(8, BS, enable_prefix_caching=False)
    compute_all(bm, make_seq(list(range(9))))
    assert bm.match_prefix(make_seq(list(range(9)))) == []


def test_empty_pool_is_an_error():
    with pytest.raises(ValueError):
        BlockManager(0, BS)
