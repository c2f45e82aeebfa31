"""The runner's persistent inputs: block-table rows kept in step with the sequences
(growth, prefix hits, preemption) and the staged arrays of a mixed batch."""

from __future__ import annotations

import torch
from torch import nn

from engine.block_manager import BlockManager
from engine.block_tables import BlockTables
from engine.runner import ModelRunner
from engine.sampling import SamplingParams
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence

BS = 4


def make_seq(tokens: list[int]) -> Sequence:
    return Sequence("r", tokens, SamplingParams(), BS)


def row_matches(tables: BlockTables, seq: Sequence) -> bool:
    index = tables.row_of(seq)  # first: it may grow the array
    return tables.rows[index, : len(seq.block_table)].tolist() == seq.block_table


def compute(bm: BlockManager, seq: Sequence, num_tokens: int) -> None:
    bm.allocate(seq, num_tokens, bm.match_prefix(seq) if not seq.block_table else None)
    seq.num_computed_tokens = num_tokens
    bm.cache_full_blocks(seq)


def test_rows_grow_by_the_appended_blocks_only():
    bm, tables = BlockManager(16, BS), BlockTables(8, 2)
    seq = make_seq(list(range(6)))
    bm.allocate(seq, 6)
    assert row_matches(tables, seq)
    row = tables.row_of(seq)
    tables.rows[row, 0] = -7  # a written entry is not written again
    for num_tokens in (7, 8, 9, 17):
        bm.allocate(seq, num_tokens)
        assert tables.row_of(seq) == row
        assert tables.rows[row, 1 : len(seq.block_table)].tolist() == seq.block_table[1:]
    assert tables.rows[row, 0] == -7


def test_a_prefix_hit_fills_several_blocks_at_once():
    bm, tables = BlockManager(16, BS), BlockTables(8, 2)
    first = make_seq(list(range(14)))
    compute(bm, first, 14)
    assert row_matches(tables, first)
    second = make_seq([*range(12), 99, 98, 97])
    compute(bm, second, len(second))
    assert second.num_cached_tokens == 12
    assert row_matches(tables, second)
    assert tables.row_of(second) != tables.row_of(first)


def test_preemption_rewrites_the_row():
    bm, tables = BlockManager(10, BS), BlockTables(8, 1)
    seq = make_seq(list(range(10)))
    compute(bm, seq, 10)
    before = list(seq.block_table)
    assert row_matches(tables, seq)
    # Preempted: its blocks go back, tail first; another request takes the tail.
    bm.free(seq)
    seq.reset_for_recompute()
    other = make_seq([50 + i for i in range(24)])
    bm.allocate(other, 24)
    compute(bm, seq, 10)  # the cached prefix back, a fresh tail: same length, new ids
    assert len(seq.block_table) == len(before) and seq.block_table != before
    assert row_matches(tables, seq)


def test_rows_are_reused_and_grow_past_the_initial_count():
    bm, tables = BlockManager(32, BS), BlockTables(4, 2)
    seqs = [make_seq([i] * 5) for i in range(5)]
    for seq in seqs:
        bm.allocate(seq, 5)
    assert all(row_matches(tables, seq) for seq in seqs)
    assert len({tables.row_of(seq) for seq in seqs}) == 5
    freed = tables.row_of(seqs[1])
    tables.remove(seqs[1].seq_id)
    tables.remove(seqs[1].seq_id)
    newcomer = make_seq([9] * 9)
    bm.allocate(newcomer, 9)
    assert tables.row_of(newcomer) == freed and row_matches(tables, newcomer)
    assert tables.num_sequences == 5


class RecordingModel(nn.Module):
    """Stands in for a model: keeps what it was given; hidden row i is i."""

    def forward(self, input_ids, positions, meta):
        self.seen = (input_ids.clone(), positions.clone())
        fields = {name: getattr(meta, name) for name in meta.__dataclass_fields__}
        self.meta = {
            name: value.clone() if isinstance(value, torch.Tensor) else value
            for name, value in fields.items()
        }
        return torch.arange(len(input_ids), dtype=torch.float32).unsqueeze(1)

    def compute_logits(self, hidden):
        return hidden


def test_a_mixed_batch_stages_what_the_sequences_say():
    bm = BlockManager(32, BS)
    runner = ModelRunner(RecordingModel(), BS, torch.device("cpu"), 4, 32, 64)
    decoding = make_seq(list(range(10, 20)))  # 9 computed, one new token
    compute(bm, decoding, 9)
    bm.allocate(decoding, 10)
    chunked = make_seq(list(range(30, 45)))  # positions 4..10 of 15 this step
    compute(bm, chunked, 4)
    bm.allocate(chunked, 11)
    batch = ScheduledBatch()
    batch.add(decoding, 1)
    batch.add(chunked, 7)

    logits = runner.run(batch).logits
    model = runner.model
    input_ids, positions = model.seen
    assert input_ids.tolist() == [19, *range(34, 41)]
    assert positions.tolist() == [9, *range(4, 11)]
    slots = [
        seq.block_table[p // BS] * BS + p % BS
        for seq, ps in ((decoding, [9]), (chunked, range(4, 11)))
        for p in ps
    ]
    assert model.meta["slot_mapping"].tolist() == slots
    assert model.meta["seq_lens"].tolist() == [10, 11]
    assert model.meta["query_start_loc"].tolist() == [0, 1, 8]
    assert model.meta["host_lens"] == ([10, 11], [0, 1, 8])  # the same, as lists
    assert not model.meta["negative_slots"] and min(slots) >= 0
    width = max(len(decoding.block_table), len(chunked.block_table))
    tables = model.meta["block_tables"].tolist()
    assert [row[: len(seq.block_table)] for row, seq in zip(tables, batch.seqs)] == [
        decoding.block_table,
        chunked.block_table,
    ]
    assert all(len(row) == width for row in tables)
    assert batch.sampling == [decoding] and logits.tolist() == [[0.0]]  # flat row 0 samples
