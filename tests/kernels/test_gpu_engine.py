"""The kernels end to end through the engine's public API, on a GPU only (gpu-check
runs these): greedy tokens on CUDA (Triton kernels, CUDA graphs) equal those on the CPU
(torch twins), and graphs give eager's tokens in fp16 and bf16 (fp32:
tests/engine/test_cuda_graphs.py; int4 on CUDA: tests/engine/test_awq_loading.py)."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

PROMPTS = [[1, 17, 300, 42], [1, 99], [1, 5, 6, 7, 8, 9, 10, 11, 12]]
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
CONFIG = dict(kv_cache_memory=0.01, max_num_seqs=4)


def greedy_tokens(model_dir, **config) -> list[list[int]]:
    llm = LLM(str(model_dir), **CONFIG, **config)
    return [out.token_ids for out in llm.generate(PROMPTS, GREEDY)]


def test_greedy_on_cuda_is_greedy_on_cpu(tiny_llama):
    on_cpu = greedy_tokens(tiny_llama, device="cpu", dtype="float32")
    assert greedy_tokens(tiny_llama, device="cuda", dtype="float32") == on_cpu


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_graphs_give_the_eager_tokens_in_16_bits(tiny_llama, dtype):
    graphed = greedy_tokens(tiny_llama, device="cuda", dtype=dtype)
    assert graphed == greedy_tokens(tiny_llama, device="cuda", dtype=dtype, enforce_eager=True)
