"""The activation dtype ``--dtype auto`` takes on a CPU: bf16 where the CPU computes in
bf16 natively (x86 AVX-512 BF16 or AMX, Arm's BF16 extension: torch's matmuls then run
bf16 instructions over half fp32's bytes), fp32 elsewhere, where bf16 values would be
widened to fp32 and rounded back around every op. A model whose quantized linears run in
the native int8-activation kernels (kernels/cpu_native.py), which take fp32, stays in
fp32. See docs/engine.md for what bf16 does to greedy tokens."""

from __future__ import annotations

from pathlib import Path

import torch

# /proc/cpuinfo's names: x86 lists "flags", Arm "Features".
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text; empty where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def native_bf16_flags(cpuinfo: str) -> frozenset[str]:
    """The native-bf16 feature flags that /proc/cpuinfo's text lists."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return NATIVE_BF16_FLAGS & flags


def auto_cpu_dtype(int8_linears: bool = False) -> tuple[torch.dtype, str]:
    """``(dtype, why)`` for activations on this machine's CPU; ``int8_linears``: the
    model's quantized linears run in the native int8-activation kernels."""
    if int8_linears:
        return torch.float32, (
            "the quantized linears run in the native int8-activation kernels, which take "
            "fp32 (in bf16 each would convert twice and the ops between them run slower)"
        )
    found = native_bf16_flags(read_cpuinfo())
    if found:
        return torch.bfloat16, f"the CPU has native bf16 ({', '.join(sorted(found))})"
    return torch.float32, "the CPU lacks native bf16 (no avx512_bf16, amx_bf16 or Arm bf16)"
