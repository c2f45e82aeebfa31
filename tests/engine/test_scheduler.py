"""Continuous batching, token budget, chunked prefill and preemption (no model)."""

from __future__ import annotations

from engine.block_manager import BlockManager
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence, SequenceStatus

BS = 4


def make_scheduler(num_blocks=64, max_num_seqs=8, budget=64) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, BS), max_num_seqs, budget)


def add(scheduler: Scheduler, num_tokens: int, first_token: int = 0) -> Sequence:
    seq = Sequence("r", list(range(first_token, first_token + num_tokens)), SamplingParams(), BS)
    scheduler.add(seq)
    return seq


def run_step(scheduler: Scheduler) -> dict[int, int]:
    """Schedule, pretend the model ran, append a token to each sampling sequence."""
    batch = scheduler.schedule()
    scheduler.complete_step(batch)
    for seq in batch.sampling:
        seq.append_token(1)
    return {seq.seq_id: n for seq, n in zip(batch.seqs, batch.num_new_tokens)}


def test_prefill_then_decode():
    scheduler = make_scheduler()
    seq = add(scheduler, 10)
    assert run_step(scheduler) == {seq.seq_id: 10}
    assert run_step(scheduler) == {seq.seq_id: 1}
    assert seq.status is SequenceStatus.RUNNING and len(seq) == 12


def test_token_budget_chunks_long_prompts():
    scheduler = make_scheduler(budget=8)
    seq = add(scheduler, 20)
    batch = scheduler.schedule()
    assert batch.num_new_tokens == [8] and batch.sampling == []
    scheduler.complete_step(batch)
    assert [run_step(scheduler)[seq.seq_id] for _ in range(2)] == [8, 4]
    assert len(seq) == 21  # sampled only after its last chunk


def test_new_requests_join_running_ones():
    scheduler = make_scheduler()
    first = add(scheduler, 6)
    run_step(scheduler)
    second = add(scheduler, 5, first_token=100)
    assert run_step(scheduler) == {first.seq_id: 1, second.seq_id: 5}


def test_max_num_seqs_caps_running():
    scheduler = make_scheduler(max_num_seqs=2)
    seqs = [add(scheduler, 3, first_token=10 * i) for i in range(3)]
    assert set(run_step(scheduler)) == {seqs[0].seq_id, seqs[1].seq_id}
    assert list(scheduler.waiting) == [seqs[2]]


def test_preemption_frees_the_newest_and_requeues_it_first():
    scheduler = make_scheduler(num_blocks=4)
    old = add(scheduler, 8)
    new = add(scheduler, 8, first_token=50)
    run_step(scheduler)  # both prefilled: all 4 blocks used
    assert scheduler.block_manager.num_free_blocks == 0
    scheduled = run_step(scheduler)  # `old` needs a third block: `new` is preempted
    assert scheduled == {old.seq_id: 1}
    assert new.status is SequenceStatus.WAITING and new.block_table == []
    assert new.num_computed_tokens == 0 and len(new) == 9  # its sampled token is kept
    assert scheduler.waiting[0] is new and scheduler.num_preemptions == 1


def test_finish_frees_blocks_from_any_state():
    scheduler = make_scheduler(max_num_seqs=1)
    running = add(scheduler, 5)
    waiting = add(scheduler, 5, first_token=20)
    run_step(scheduler)
    scheduler.finish(running, "abort")
    scheduler.finish(waiting, "abort")
    assert not scheduler.has_unfinished
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks
    assert running.finish_reason == "abort" and running.is_finished
