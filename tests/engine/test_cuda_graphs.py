"""CUDA graphs for decode: which batch sizes are captured, that CPU runs never capture,
and (on a GPU) that replaying padded graphs gives the eager path's tokens."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.cuda_graphs import capture_sizes

PROMPTS = [[1, 17, 300, 42], [1, 99], [1, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3], [1, 640]]
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def test_capture_sizes_are_powers_of_two_up_to_the_limit():
    assert capture_sizes(1) == [1]
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert capture_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_cpu_runs_eagerly(tiny_llama):
    assert LLM(str(tiny_llama), kv_cache_memory=0.01).engine.core.runner.graphs is None


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
