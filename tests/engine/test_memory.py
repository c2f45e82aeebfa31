"""Memory sizing: a model that cannot fit fails at start with the numbers."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, EngineError, memory


def test_checkpoint_bytes_follow_the_target_dtype(tiny_llama):
    fp32 = memory.checkpoint_bytes(tiny_llama, torch.float32)
    assert memory.checkpoint_bytes(tiny_llama, torch.float16) * 2 == fp32
    assert fp32 == (tiny_llama / "model.safetensors").stat().st_size - _header_bytes(tiny_llama)


def _header_bytes(model_dir) -> int:
    with open(model_dir / "model.safetensors", "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_model_too_big_for_memory_is_refused_with_numbers(tiny_llama, monkeypatch):
    monkeypatch.setattr(memory, "host_available_bytes", lambda: memory.HOST_RESERVE_BYTES + 1000)
    with pytest.raises(EngineError, match=r"weights need 0\.00 GiB but only 0\.00 GiB"):
        LLM(str(tiny_llama))


def test_shared_memory_sizes_the_kv_pool_from_available_ram(monkeypatch):
    monkeypatch.setattr(memory, "host_available_bytes", lambda: memory.HOST_RESERVE_BYTES + 1000)
    assert memory.kv_budget_bytes(None, 0.5, torch.device("cpu")) == 500
    assert memory.kv_budget_bytes(0.25, 0.5, torch.device("cpu")) == memory.GIB // 4
    plenty = memory.HOST_RESERVE_BYTES + 100 * memory.GIB
    monkeypatch.setattr(memory, "host_available_bytes", lambda: plenty)
    assert memory.kv_budget_bytes(None, 0.5, torch.device("cpu")) == memory.DEFAULT_CPU_KV_BYTES


def test_kv_pool_too_small_for_one_block(tiny_llama):
    with pytest.raises(EngineError, match="holds no block"):
        LLM(str(tiny_llama), kv_cache_memory=1e-9)
