"""Continuous batching: which sequences run in the next step, and on how many tokens.

Pure Python (no torch). Each step spends at most ``max_num_batched_tokens`` tokens:
running sequences first (decodes and the rest of chunked prefills, oldest first), then
waiting ones, whose prompts may be split across steps ("chunked prefill"). When the KV
pool runs out, the newest running sequence is preempted by recompute: its blocks are
freed and it goes back to the front of the queue with its tokens kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """The work of one step: ``seqs[i]`` computes its next ``num_new_tokens[i]`` tokens.
    ``sampling`` lists, in batch order, those whose last token is among them: they
    sample a next token from this step's logits."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    sampling: list[Sequence] = field(default_factory=list)

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        if num_new_tokens == seq.num_uncomputed_tokens:
            self.sampling.append(seq)

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        preempted = False
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop to make room
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self._make_room(seq, seq.num_computed_tokens + num_new):
                preempted = True
                continue
            self.block_manager.allocate(seq, seq.num_computed_tokens + num_new)
            batch.add(seq, num_new)
            budget -= num_new
        # NOTE: no admissions in a step that had to preempt: the pool is too tight.
        while not preempted and self.waiting and budget and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            cached = self.block_manager.match_prefix(seq)
            num_cached = len(cached) * self.block_manager.block_size
            num_new = min(len(seq) - num_cached, budget)
            if not self.block_manager.can_allocate(seq, num_cached + num_new, cached):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq, num_cached + num_new, cached)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.add(seq, num_new)
            budget -= num_new
        return batch

    def complete_step(self, batch: ScheduledBatch) -> None:
        """Record that the batch's KV is computed (and publish its full blocks)."""
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new
            self.block_manager.cache_full_blocks(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """End ``seq`` (from any state) and free its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.block_manager.free(seq)

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Preempt the newest running sequences until ``seq`` fits; False if ``seq``
        itself had to go."""
        while not self.block_manager.can_allocate(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
