"""EngineCore alone: no tokenizer, no model. A stub runner's logits always favour the
token after the sequence's last one, so every step's deltas are known in advance."""

from __future__ import annotations

import pytest
import torch

from engine import block_manager
from engine.block_manager import BlockManager, chain_hash
from engine.core import EngineCore
from engine.sampler import Sampler
from engine.sampling import SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence
from engine.step_logits import StepLogits

VOCAB = 50
EOS = 49
BLOCK_SIZE = 4


class NextTokenRunner:
    """Logits that put the sequence's last token + 1 first; raises for any batch holding
    a sequence whose prompt starts with ``poison``."""

    image_cache = None

    def __init__(self, poison: int | None = None):
        self.poison = poison
        self.removed: list[int] = []

    def run(self, batch: ScheduledBatch) -> StepLogits:
        if any(seq.prompt_token_ids[0] == self.poison for seq in batch.seqs):
            raise RuntimeError("injected failure")
        logits = torch.zeros(len(batch.sampling), VOCAB)
        for row, seq in enumerate(batch.sampling):
            logits[row, (seq.token_ids[-1] + 1) % VOCAB] = 10.0
        return StepLogits(logits)

    def remove_request(self, seq_id: int) -> None:
        self.removed.append(seq_id)


def make_core(runner=None, num_blocks: int = 64, max_model_len: int = 40) -> EngineCore:
    scheduler = Scheduler(BlockManager(num_blocks, BLOCK_SIZE), 8, 64)
    return EngineCore(
        scheduler, runner or NextTokenRunner(), Sampler(), frozenset({EOS}), max_model_len
    )


def add(core: EngineCore, request_id: str, prompt: list[int], **params) -> Sequence:
    seq = Sequence(request_id, prompt, SamplingParams(temperature=0, **params), BLOCK_SIZE)
    core.add(seq)
    return seq


def run_to_end(core: EngineCore) -> dict[str, list]:
    """Every request's deltas, in order."""
    deltas: dict[str, list] = {}
    while core.has_unfinished:
        for delta in core.step():
            deltas.setdefault(delta.request_id, []).append(delta)
    return deltas


def test_one_token_per_delta_and_the_finish_reasons():
    core = make_core()
    add(core, "length", [1, 2, 3], max_tokens=5)
    add(core, "eos", [45], max_tokens=20)
    add(core, "stop-id", [10], max_tokens=20, stop_token_ids=(13,))
    add(core, "ignore-eos", [47], max_tokens=4, ignore_eos=True)
    deltas = run_to_end(core)
    tokens = {rid: [t for d in ds for t in d.new_token_ids] for rid, ds in deltas.items()}
    assert tokens == {
        "length": [4, 5, 6, 7, 8],
        "eos": [46, 47, 48, 49],
        "stop-id": [11, 12, 13],
        "ignore-eos": [48, 49, 0, 1],
    }
    assert all(len(d.new_token_ids) == 1 for ds in deltas.values() for d in ds)
    reasons = {rid: [d.finish_reason for d in ds] for rid, ds in deltas.items()}
    assert reasons["length"] == [None] * 4 + ["length"]
    assert reasons["eos"][-1] == reasons["stop-id"][-1] == "stop"
    assert reasons["ignore-eos"][-1] == "length"
    assert not core.requests and core.block_manager.num_free_blocks == 64
    assert core.stats().num_generation_tokens == 16


def test_the_context_end_stops_a_request():
    core = make_core(max_model_len=8)
    add(core, "long", [1, 2, 3, 4, 5], max_tokens=100)
    [*_, last] = run_to_end(core)["long"]
    assert last.finish_reason == "length" and last.new_token_ids == [8]


def test_logprob_samples_only_when_asked():
    core = make_core()
    add(core, "plain", [1], max_tokens=2)
    add(core, "logprobs", [1], max_tokens=2, logprobs=2)
    deltas = run_to_end(core)
    assert all(d.samples == [] for d in deltas["plain"])
    [first, _] = deltas["logprobs"]
    [sample] = first.samples
    assert sample.token_id == 2 and [i for i, _ in sample.top_logprobs][0] == 2


def test_abort_frees_at_once_and_names_the_request():
    runner = NextTokenRunner()
    core = make_core(runner)
    seq = add(core, "a", [1, 2, 3, 4, 5], max_tokens=50)
    core.step()
    assert core.block_manager.num_free_blocks < 64
    delta = core.abort("a")
    assert (delta.request_id, delta.new_token_ids, delta.finish_reason) == ("a", [], "abort")
    assert core.block_manager.num_free_blocks == 64 and not core.has_unfinished
    assert runner.removed == [seq.seq_id]
    assert core.abort("a") is None


def test_a_failing_request_fails_alone():
    core = make_core(NextTokenRunner(poison=30))
    add(core, "good", [1], max_tokens=3)
    add(core, "bad", [30], max_tokens=3)
    deltas = run_to_end(core)
    assert [d.finish_reason for d in deltas["bad"]] == ["error"]
    assert [t for d in deltas["good"] for t in d.new_token_ids] == [2, 3, 4]


def test_a_request_id_is_taken_once():
    core = make_core()
    add(core, "same", [1])
    with pytest.raises(ValueError, match="already in use"):
        add(core, "same", [2])


def test_preemption_counts_the_prefix_query_once_and_hashes_blocks_once(monkeypatch):
    hashed_blocks = []

    def counting_chain_hash(parent: bytes, token_ids: list[int], image_key: bytes = b"") -> bytes:
        hashed_blocks.append(tuple(token_ids))
        return chain_hash(parent, token_ids, image_key)

    monkeypatch.setattr(block_manager, "chain_hash", counting_chain_hash)
    # Room for two sequences' prompts but not their growth: the newest is preempted, and
    # waits (its prefix looked up again each step) until it fits.
    core = make_core(num_blocks=5)
    first = add(core, "first", list(range(1, 9)), max_tokens=8)
    second = add(core, "second", list(range(11, 19)), max_tokens=8)
    run_to_end(core)
    assert core.scheduler.num_preemptions > 0 and second.num_preemptions > 0
    # Each prompt was a query once, however often it was readmitted.
    assert core.stats().num_prefix_query_tokens == len(first.prompt_token_ids) * 2
    # Every full block hashed once in the sequence's life: 15 of 16 tokens computed.
    assert len(hashed_blocks) == len(set(hashed_blocks)) == 2 * (15 // BLOCK_SIZE)
