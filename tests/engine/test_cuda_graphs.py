"""CUDA graphs for decode: which batch sizes are captured, that CPU runs never capture,
that a decode step staged for a graph (on CPU, replayed eagerly) gives the eager
path's tokens, and (on a GPU) that replaying padded graphs does."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.cuda_graphs import DecodeGraphs, capture_sizes
from engine.step_inputs import StepArrays
from engine.step_logits import HostTokenIds, StepLogits

PROMPTS = [[1, 17, 300, 42], [1, 99], [1, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3], [1, 640]]
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def test_capture_sizes_are_powers_of_two_up_to_the_limit():
    assert capture_sizes(1) == [1]
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert capture_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_cpu_runs_eagerly(tiny_llama):
    assert LLM(str(tiny_llama), kv_cache_memory=0.01).engine.core.runner.graphs is None


class _NoGraph:
    def pool(self):
        return None


class EagerReplay(DecodeGraphs):
    """DecodeGraphs without CUDA: "replay" runs the model over the real rows of the
    staged decode layout (the CPU KV write cannot skip the padding rows' slot -1)."""

    def _capture(self, model, size, pool):
        self.model, self.num_replays = model, 0
        return _NoGraph(), None, None

    def replay(self, num_seqs):
        size = self.padded_size(num_seqs)
        staged = self.inputs.device_arrays(self.decode_layout(size))
        assert staged.block_tables.shape == (size, self.max_blocks_per_seq)
        assert staged.slot_mapping[num_seqs:].eq(-1).all()
        assert staged.seq_lens[num_seqs:].eq(1).all()
        assert staged.query_start_loc.tolist() == list(range(size + 1))
        real = StepArrays(
            input_ids=staged.input_ids[:num_seqs],
            positions=staged.positions[:num_seqs],
            slot_mapping=staged.slot_mapping[:num_seqs],
            sample_rows=staged.sample_rows[:num_seqs],
            seq_lens=staged.seq_lens[:num_seqs],
            query_start_loc=staged.query_start_loc[: num_seqs + 1],
            block_tables=staged.block_tables[:num_seqs],
        )
        hidden = self.model(real.input_ids, real.positions, real.attention_metadata())
        self.num_replays += 1
        logits = self.model.compute_logits(hidden)
        self.host_argmax.send(logits.argmax(dim=-1))
        return StepLogits(logits, self.host_argmax)


class CountedIds(HostTokenIds):
    def __init__(self, *args):
        super().__init__(*args)
        self.num_received = 0

    def receive(self):
        self.num_received += 1
        return super().receive()


def replayed_and_eager(tiny_llama, params: SamplingParams) -> EagerReplay:
    """Generate PROMPTS through the eager stand-in for graphs; its tokens must be the
    eager engine's. Returns the stand-in, to count what it did."""
    eager = LLM(str(tiny_llama), kv_cache_memory=0.01, max_num_seqs=8)
    graphed = LLM(str(tiny_llama), kv_cache_memory=0.01, max_num_seqs=8)
    runner = graphed.engine.core.runner
    runner.graphs = EagerReplay(runner.model, runner.inputs, 8, runner.max_blocks_per_seq)
    runner.graphs.host_argmax = CountedIds(8, runner.device)
    ours = [out.token_ids for out in graphed.generate(PROMPTS, params)]
    assert ours == [out.token_ids for out in eager.generate(PROMPTS, params)]
    assert runner.graphs.num_replays >= params.max_tokens - 1
    return runner.graphs


def test_a_decode_step_staged_for_a_graph_gives_the_eager_tokens(tiny_llama):
    graphs = replayed_and_eager(tiny_llama, GREEDY)
    # Every replay was greedy through and through, so each took the replay's argmax.
    assert graphs.host_argmax.num_received == graphs.num_replays


def test_a_sampled_batch_replayed_samples_the_logits(tiny_llama):
    """Seeded sampling through replays draws what it draws eagerly."""
    sampled = SamplingParams(max_tokens=12, temperature=0.8, seed=7, ignore_eos=True)
    assert replayed_and_eager(tiny_llama, sampled).host_argmax.num_received == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("num_prompts", [1, 3, 5])  # 3 and 5 replay graphs of 4 and 8
def test_graphs_give_the_eager_tokens(tiny_llama, num_prompts):
    config = dict(device="cuda", dtype="float32", kv_cache_memory=0.01, max_num_seqs=8)
    graphed = LLM(str(tiny_llama), **config)
    assert graphed.engine.core.runner.graphs is not None
    eager = LLM(str(tiny_llama), enforce_eager=True, **config)
    assert eager.engine.core.runner.graphs is None
    prompts = PROMPTS[:num_prompts]
    ours = [out.token_ids for out in graphed.generate(prompts, GREEDY)]
    assert ours == [out.token_ids for out in eager.generate(prompts, GREEDY)]
