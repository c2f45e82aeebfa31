"""The kernel warm-up (engine/layers/warmup.py): which step shapes it runs, and that a
model runs them (on the CPU twins here; on a GPU the same calls compile the kernels)
without touching the KV cache."""

from __future__ import annotations

import torch

from engine.kv_cache import allocate_kv_cache
from engine.layers.warmup import warm_up_kernels, warmup_steps
from engine.loader import load_config, load_model


def test_steps_cover_decode_batches_and_both_ends_of_each_prompt_bucket():
    steps = warmup_steps(max_num_seqs=48, max_num_batched_tokens=64)
    decode = [tokens for tokens, seqs in steps if tokens == seqs]
    assert decode == [1, 2, 3, 4, 8, 16, 32, 48]
    assert [tokens for tokens, seqs in steps if seqs == 1 and tokens > 1] == [9, 16, 17, 32, 33, 64]
    assert (9, 2) in steps and all(tokens <= 64 for tokens, _ in steps)


def test_warm_up_runs_the_model_and_leaves_the_cache_alone(tiny_llama):
    model = load_model(tiny_llama, load_config(tiny_llama), torch.float32, torch.device("cpu"))
    allocate_kv_cache(model, 8, 16, torch.float32, torch.device("cpu"))
    warm_up_kernels(model, block_size=16, max_num_seqs=4, max_num_batched_tokens=40)
    assert all(not layer.k_cache.any() for layer in model.attention_layers())
