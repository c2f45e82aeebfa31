"""Kernels over plain tensors. Each Triton kernel has a torch reference twin with the same
signature (kernels/reference.py); these dispatchers run the Triton one on CUDA tensors and,
on CPU ones, the twin, or the C ops of kernels/cpu_ops.py once an engine has loaded the
native CPU library (``use_native_cpu_ops``).

NOTE: triton is imported on the first CUDA call, never at import: tests must be able to
set TRITON_INTERPRET before any kernel is defined, and a CPU-only install needs no triton.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from types import ModuleType
from typing import Any

import torch

from kernels import reference
from kernels.cpu_native import NativeKernels
from kernels.cpu_ops import NativeCpuOps

logger = logging.getLogger(__name__)


def refuse_hub_kernels_distribution() -> None:
    """Hugging Face's ``kernels`` distribution has this package's import name: installed
    beside edgechat, transformers' ``from kernels import ...`` finds one or the other and
    fails with an ImportError that names neither. Say so plainly instead."""
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return
    raise ImportError(
        "Hugging Face's `kernels` package is installed in this environment, and its "
        "import name is edgechat's own kernels package: uninstall it (`pip uninstall "
        "kernels`) and keep transformers below 5.25, which requires it"
    )


refuse_hub_kernels_distribution()

__all__ = [
    "add_rms_norm",
    "awq_linear",
    "awq_linear_silu_mul",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "rotary_write_kv_cache",
    "silu_and_mul",
    "triton_available",
    "use_native_cpu_ops",
]

# What CPU tensors run: the twins, or NativeCpuOps (the twins' signatures too).
_cpu_ops: Any = reference


def use_native_cpu_ops(native: NativeKernels | None) -> None:
    """Run the CPU's fp32 ops between the linears (norms, rotary and KV write, decode
    attention, SiLU) in ``native``'s C from now on; the torch twins where None."""
    global _cpu_ops
    _cpu_ops = reference if native is None else NativeCpuOps(native)


@functools.cache
def _triton_ops() -> ModuleType | None:
    try:
        from kernels import triton_ops
    except ImportError as e:  # e.g. a Jetson without the Jetson AI Lab triton wheel
        logger.warning("triton is unavailable (%s): CUDA runs the slow torch kernels", e)
        return None
    return triton_ops


def triton_available() -> bool:
    """Whether CUDA tensors get the Triton kernels (which CUDA graphs need: the torch
    twins sync with the host)."""
    return _triton_ops() is not None


def _ops(tensor: torch.Tensor) -> Any:
    if tensor.is_cuda:
        return _triton_ops() or reference
    return _cpu_ops


def _takes_host_hints(ops: Any) -> bool:
    """Whether ``ops`` (not the Triton kernels) takes the host-side hints of
    ``rotary_write_kv_cache`` and ``paged_attention``."""
    return ops is reference or ops is _cpu_ops


def rotary_write_kv_cache(
    positions: torch.Tensor,  # [num_tokens] int64: each token's row of cos and sin
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,
    cos: torch.Tensor,  # [num_rows, head_dim // 2] fp32
    sin: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; negative slots are skipped
    negative_slots: bool = True,  # False: the caller knows there are none
) -> torch.Tensor:  # the rotated queries, [num_tokens, num_heads, head_dim]
    """Rotate queries and keys, and store the rotated keys and the values at their
    slots: what a decoder layer does before attention, in one launch. ``negative_slots``
    spares the torch twin a check of the slots (the Triton kernel skips them as it goes)."""
    args = (positions, query, key, value, cos, sin, k_cache, v_cache, slot_mapping)
    ops = _ops(query)
    if _takes_host_hints(ops):
        return ops.rotary_write_kv_cache(*args, negative_slots)
    return ops.rotary_write_kv_cache(*args)


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    scale: float,
    host_lens: tuple[list[int], list[int]] | None = None,  # seq_lens, query_start_loc
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """``host_lens``: the lengths as lists where the caller has them, for the torch twin,
    which loops over sequences on the host (the Triton kernel reads the tensors)."""
    args = (query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale)
    ops = _ops(query)
    if _takes_host_hints(ops):
        return ops.paged_attention(*args, host_lens)
    return ops.paged_attention(*args)


def awq_linear(
    x: torch.Tensor,  # [..., K]
    qweight: torch.Tensor,  # [K, N/8] int32
    qzeros: torch.Tensor,  # [K/G, N/8] int32
    scales: torch.Tensor,  # [K/G, N]
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # [..., N]
    return _ops(x).awq_linear(x, qweight, qzeros, scales, group_size, bias)


def awq_linear_silu_mul(
    x: torch.Tensor,  # [..., K]
    qweight: torch.Tensor,  # [K, N/8] int32: gate | up, each N/2 wide
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # [..., N/2]
    """``silu_and_mul(awq_linear(x, ...))``: a gate_up projection and its activation, in
    one launch on a GPU (the W4A16 kernels' GATED epilogue)."""
    return _ops(x).awq_linear_silu_mul(x, qweight, qzeros, scales, group_size, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _ops(x).rms_norm(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _ops(x).add_rms_norm(x, residual, weight, eps)


def rotary_embedding(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    cos: torch.Tensor,  # [max_position, head_dim // 2] fp32
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _ops(query).rotary_embedding(positions, query, key, cos, sin)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _ops(x).silu_and_mul(x)
