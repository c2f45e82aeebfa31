"""KV-cache block bookkeeping: allocation, reference counts and the prefix cache.

Pure Python (no torch): the pool's tensors live in kv_cache.py; this file only decides
which block ids a sequence's tokens go to.

Prefix caching: once a block is full and its KV computed, it gets a hash chained from
the previous block's hash, its own token ids and the content hashes of the images it
shows part of, so equal hashes mean equal prefixes. Keying each block on its own images
(not the whole prompt's) keeps a conversation's earlier blocks shared when a later turn
adds an image.
A finished sequence's blocks go back to the free queue *with* their hashes; a later
request with the same prefix takes them back instead of recomputing, until the block is
handed out for something else (least recently freed first).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None


def chain_hash(parent: bytes, token_ids: list[int], image_key: bytes = b"") -> bytes:
    # A hashed block is always full, so the token bytes have a fixed length and the
    # image key that follows them cannot be confused with tokens.
    data = parent + array("q", token_ids).tobytes() + image_key
    return hashlib.blake2b(data, digest_size=16).digest()


def block_hashes(seq: Sequence, num_blocks: int) -> list[bytes]:
    """The hashes of ``seq``'s first ``num_blocks`` (full) blocks, extending the ones the
    sequence has already: each block is hashed once in a sequence's life."""
    hashes = seq.block_hashes
    for index in range(len(hashes), num_blocks):
        parent = hashes[-1] if hashes else b""
        tokens, image_key = seq.block_tokens(index), seq.block_image_key(index)
        hashes.append(chain_hash(parent, tokens, image_key))
    return hashes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Blocks nobody references, oldest first; they may still hold a cached prefix.
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block: dict[bytes, int] = {}
        self.num_prefix_query_tokens = 0
        self.num_prefix_hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by live sequences."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding the KV of the longest cached prefix of ``seq``. Pure lookup.

        Only full blocks before the last token count: the last token must be computed
        to produce logits, so at least one token is always left to compute.
        """
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        for key in block_hashes(seq, (len(seq) - 1) // self.block_size):
            block_id = self.hash_to_block.get(key)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def num_blocks_needed(
        self, seq: Sequence, num_tokens: int, cached: list[int] | None = None
    ) -> int:
        """Free blocks that ``allocate(seq, num_tokens, cached)`` would take."""
        cached = cached or []
        num_new = seq.num_blocks_for(num_tokens) - len(seq.block_table) - len(cached)
        num_revived = sum(1 for block_id in cached if self.blocks[block_id].ref_count == 0)
        return max(num_new, 0) + num_revived

    def can_allocate(self, seq: Sequence, num_tokens: int, cached: list[int] | None = None) -> bool:
        return self.num_blocks_needed(seq, num_tokens, cached) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_tokens: int, cached: list[int] | None = None) -> None:
        """Give ``seq`` blocks for its first ``num_tokens`` positions, starting with the
        ``cached`` prefix blocks from ``match_prefix`` (only for a sequence with none yet)."""
        assert self.can_allocate(seq, num_tokens, cached)
        # NOTE: a preempted sequence's readmission is not a new query of the cache.
        counts = not seq.block_table and seq.num_preemptions == 0
        if counts and self.enable_prefix_caching:
            self.num_prefix_query_tokens += len(seq)
        if cached:
            assert not seq.block_table
            for block_id in cached:
                self._take(block_id)
            seq.block_table = list(cached)
            seq.num_cached_tokens = seq.num_computed_tokens = len(cached) * self.block_size
            if counts:
                self.num_prefix_hit_tokens += seq.num_cached_tokens
        while len(seq.block_table) < seq.num_blocks_for(num_tokens):
            block_id = next(iter(self.free_queue))
            self._evict(block_id)
            self._take(block_id)
            seq.block_table.append(block_id)

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s references. Tail blocks are queued first, so they are reused
        before the prefix blocks that other requests are likelier to share."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0
            if block.ref_count == 0:
                self.free_queue[block_id] = None
        seq.block_table = []

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Publish the hashes of ``seq``'s blocks that are full and computed."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        first_unhashed = num_full
        while first_unhashed > 0 and self._block_of(seq, first_unhashed - 1).hash is None:
            first_unhashed -= 1
        hashes = block_hashes(seq, num_full)
        for index in range(first_unhashed, num_full):
            block = self._block_of(seq, index)
            block.hash = hashes[index]
            # NOTE: an equal block computed twice (same prompt in one step) keeps the first.
            self.hash_to_block.setdefault(block.hash, block.block_id)

    def _block_of(self, seq: Sequence, index: int) -> Block:
        return self.blocks[seq.block_table[index]]

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    def _evict(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]
        block.hash = None
