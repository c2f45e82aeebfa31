"""dtype auto on CPU: bf16 where /proc/cpuinfo lists native bf16 (x86 avx512_bf16 or
amx_bf16, Arm bf16), fp32 elsewhere (faked flags); an explicit dtype wins; the engine
logs the choice and runs in it."""

from __future__ import annotations

import logging

import pytest
import torch

from engine import LLM, SamplingParams, cpu_dtype
from engine.model_info import pick_dtype

CPU = torch.device("cpu")
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c avx512f\n"  # AVX-512, no BF16
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRACE = "processor\t: 0\nFeatures\t: fp asimd fphp asimdhp sve bf16 i8mm\n"
ORIN = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes fphp asimdhp asimddp\n"  # v8.2


@pytest.mark.parametrize(
    "cpuinfo, dtype",
    [
        (ZEN3, torch.float32),
        (SAPPHIRE_RAPIDS, torch.bfloat16),
        ("flags\t\t: avx2 avx512f avx512_bf16\n", torch.bfloat16),  # Cooper Lake, Zen 4
        (GRACE, torch.bfloat16),
        (ORIN, torch.float32),
        ("", torch.float32),  # no /proc/cpuinfo (not Linux)
    ],
)
def test_auto_dtype_on_cpu(monkeypatch, cpuinfo, dtype):
    monkeypatch.setattr(cpu_dtype, "read_cpuinfo", lambda: cpuinfo)
    assert pick_dtype("auto", None, CPU) == dtype
    assert pick_dtype("float32", None, CPU) == torch.float32
    assert pick_dtype("float16", None, CPU) == torch.float16


def test_flag_names_are_whole_words():
    assert cpu_dtype.native_bf16_flags("flags\t: avx512_bf16x notbf16\n") == frozenset()
    assert cpu_dtype.native_bf16_flags("model name\t: bf16 inside\n") == frozenset()


def test_engine_logs_and_runs_the_choice(monkeypatch, caplog, tiny_llama):
    monkeypatch.setattr(cpu_dtype, "read_cpuinfo", lambda: SAPPHIRE_RAPIDS)
    greedy = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    with caplog.at_level(logging.INFO, logger="engine.model_info"):
        llm = LLM(str(tiny_llama), kv_cache_memory=0.01)
    assert "dtype auto on CPU: bfloat16, as the CPU has native bf16 (amx_bf16, avx512_bf16)" in (
        caplog.text
    )
    assert llm.engine.dtype == torch.bfloat16
    assert next(llm.engine.core.runner.model.parameters()).dtype == torch.bfloat16
    assert len(llm.generate([[1, 5, 9]], greedy)[0].token_ids) == 4
    explicit = LLM(str(tiny_llama), kv_cache_memory=0.01, dtype="float32")
    assert explicit.engine.dtype == torch.float32


def test_native_int8_linears_keep_the_model_in_fp32(monkeypatch, caplog, tiny_llama):
    """The native kernels take fp32: a quantized model they run stays fp32 under auto,
    even where the CPU has native bf16; an explicit bf16 still wins."""
    monkeypatch.setattr(cpu_dtype, "read_cpuinfo", lambda: SAPPHIRE_RAPIDS)
    with caplog.at_level(logging.INFO, logger="engine.model_info"):
        llm = LLM(str(tiny_llama), kv_cache_memory=0.01, quantization="int8")
    assert "dtype auto on CPU: float32, as the quantized linears run in the native" in caplog.text
    assert llm.engine.dtype == torch.float32
    explicit = LLM(str(tiny_llama), kv_cache_memory=0.01, quantization="int8", dtype="bfloat16")
    assert explicit.engine.dtype == torch.bfloat16
