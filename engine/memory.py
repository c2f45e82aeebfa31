"""How much memory the engine may take. On a Jetson the GPU shares the system RAM with the
OS and the CPU side of the process, so "free GPU memory" means little there: we size from
the memory the kernel reports available, minus a reserve, as we do on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.errors import EngineError
from engine.quant.tinychat import find_tinychat_checkpoint
from engine.weights import checkpoint_entries

GIB = 1 << 30
# Left to the OS, the CUDA context and the Python heap when RAM is shared (Orin Nano: 8 GiB).
HOST_RESERVE_BYTES = 3 * GIB // 2
# Without an explicit budget on CPU: enough for several full contexts, never a surprise.
DEFAULT_CPU_KV_BYTES = 2 * GIB


def shares_host_memory(device: torch.device) -> bool:
    """CPU, or an integrated GPU (Jetson) whose memory is the system RAM."""
    if device.type == "cpu":
        return True
    return bool(torch.cuda.get_device_properties(device).is_integrated)


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo: free RAM plus reclaimable caches."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def usable_bytes(device: torch.device) -> int:
    """Memory the engine may still allocate on ``device``."""
    if shares_host_memory(device):
        return max(0, host_available_bytes() - HOST_RESERVE_BYTES)
    free, _ = torch.cuda.mem_get_info(device)
    return free


def checkpoint_bytes(model_dir: Path, dtype: torch.dtype) -> int:
    """Bytes the weights take once loaded: floating tensors in ``dtype``, others as stored."""
    tinychat = find_tinychat_checkpoint(model_dir)
    # NOTE: a TinyChat .pt counts at its size on disk: int4 packs to the same bytes, and
    # its few 16-bit tensors are a small share of it.
    total = tinychat.stat().st_size if tinychat is not None else 0
    for entry in checkpoint_entries(model_dir, with_language_model=tinychat is None):
        numel = entry.num_bytes // entry.dtype.itemsize
        total += numel * dtype.itemsize if entry.dtype.is_floating_point else entry.num_bytes
    return total


def check_weights_fit(weights_bytes: int, device: torch.device) -> None:
    """Fail at start, with the numbers, rather than run out of memory halfway through."""
    available = usable_bytes(device)
    if weights_bytes > available:
        reserve = " after a 1.5 GiB reserve for the system" if shares_host_memory(device) else ""
        raise EngineError(
            f"the model's weights need {weights_bytes / GIB:.2f} GiB but only "
            f"{available / GIB:.2f} GiB is available on {device}{reserve}; use a smaller "
            "or int4 (AWQ) model, or free memory"
        )


def kv_budget_bytes(
    kv_cache_memory: float | None, kv_cache_fraction: float, device: torch.device
) -> int:
    """The bytes the KV pool may take (measured after the weights are loaded): the
    explicit budget, else a fraction of what is usable (capped by a default on CPU)."""
    if kv_cache_memory is not None:
        return int(kv_cache_memory * GIB)
    budget = int(usable_bytes(device) * kv_cache_fraction)
    return min(budget, DEFAULT_CPU_KV_BYTES) if device.type == "cpu" else budget
