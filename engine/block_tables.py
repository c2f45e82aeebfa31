"""Each live sequence's block table as a row of one host int32 array, kept in step with
``Sequence.block_table`` by writing only the blocks appended since the runner last saw
it, so a step copies rows with one numpy gather instead of rebuilding them from lists."""

from __future__ import annotations

import numpy as np

from engine.sequence import Sequence


class _Row:
    __slots__ = ("index", "num_blocks", "num_preemptions")

    def __init__(self, index: int):
        self.index = index
        self.num_blocks = 0  # entries of the sequence's table written to the row so far
        self.num_preemptions = 0


class BlockTables:
    """``rows[row_of(seq)][:len(seq.block_table)]`` equals ``seq.block_table``.

    NOTE: a table only grows by appends, except on preemption, when the block manager
    frees it and allocates afresh (a prefix hit may then hand over several blocks at
    once); ``Sequence.num_preemptions`` tells the runner to rewrite the row."""

    def __init__(self, max_blocks_per_seq: int, num_rows: int):
        self.rows = np.zeros((num_rows, max_blocks_per_seq), dtype=np.int32)
        self._rows: dict[int, _Row] = {}  # seq_id -> its row
        self._free_rows = list(range(num_rows - 1, -1, -1))

    @property
    def num_sequences(self) -> int:
        return len(self._rows)

    def row_of(self, seq: Sequence) -> int:
        """``seq``'s row, brought up to date with its block table."""
        row = self._rows.get(seq.seq_id)
        if row is None:
            row = self._rows[seq.seq_id] = _Row(self._take_row())
        if row.num_preemptions != seq.num_preemptions:
            row.num_blocks = 0
            row.num_preemptions = seq.num_preemptions
        table = seq.block_table
        assert len(table) >= row.num_blocks, f"sequence {seq.seq_id}'s block table shrank"
        if len(table) > row.num_blocks:
            self.rows[row.index, row.num_blocks : len(table)] = table[row.num_blocks :]
            row.num_blocks = len(table)
        return row.index

    def remove(self, seq_id: int) -> None:
        """Free ``seq_id``'s row; a no-op for a sequence that has none."""
        row = self._rows.pop(seq_id, None)
        if row is not None:
            self._free_rows.append(row.index)

    def _take_row(self) -> int:
        if not self._free_rows:
            # More live sequences than rows: preempted ones keep theirs while they wait.
            num_rows = len(self.rows)
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
            self._free_rows = list(range(2 * num_rows - 1, num_rows - 1, -1))
        return self._free_rows.pop()
