"""The CPU's ops between the linears in C (kernels/cpu_decode_ops.c, built by
kernels/cpu_native.py): what ``kernels`` dispatches CPU tensors to once an engine has
given it the native library (``kernels.use_native_cpu_ops``). Each op takes the C path
for fp32 tensors laid out as the C reads them, and its torch twin (kernels/reference.py)
for anything else: another dtype, an odd layout, attention over prefills. The twins
stay the oracle (tests/kernels/test_cpu_ops.py)."""

from __future__ import annotations

import torch

from kernels import reference
from kernels.cpu_native import NativeKernels

FP32 = torch.float32


class NativeCpuOps:
    """The twins' signatures (kernels/reference.py); ops without a C path are the twins."""

    def __init__(self, native: NativeKernels):
        self.native = native

    def __getattr__(self, name: str):  # awq_linear, rotary_embedding: the twins
        return getattr(reference, name)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if not rows_in_fp32(x, weight):
            return reference.rms_norm(x, weight, eps)
        return self.native.add_rms_norm(x, None, weight, eps)[0]

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not (rows_in_fp32(x, residual, weight) and x.shape == residual.shape):
            return reference.add_rms_norm(x, residual, weight, eps)
        return self.native.add_rms_norm(x, residual, weight, eps)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        if not rows_in_fp32(x):
            return reference.silu_and_mul(x)
        return self.native.silu_and_mul(x)

    def awq_linear_silu_mul(self, x: torch.Tensor, *weights) -> torch.Tensor:
        return self.silu_and_mul(reference.awq_linear(x, *weights))

    def rotary_write_kv_cache(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        negative_slots: bool = True,
    ) -> torch.Tensor:
        args = (positions, query, key, value, cos, sin, k_cache, v_cache, slot_mapping)
        takes = (
            _heads_contiguous(query, key, value)
            and rows_in_fp32(cos, sin, k_cache, v_cache)
            and contiguous_int64(positions, slot_mapping)
        )
        if not takes:
            return reference.rotary_write_kv_cache(*args, negative_slots)
        return self.native.rotary_write_kv(*args)

    def paged_attention(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        query_start_loc: torch.Tensor,
        scale: float,
        host_lens: tuple[list[int], list[int]] | None = None,
    ) -> torch.Tensor:
        # One query a sequence (each has at least one): a batch of decodes only.
        takes = (
            query.shape[0] == seq_lens.shape[0]
            and rows_in_fp32(query, k_cache, v_cache)
            and block_tables.dtype == seq_lens.dtype == torch.int32
            and block_tables.stride(-1) == 1
            and seq_lens.is_contiguous()
        )
        if not takes:
            args = (query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale)
            return reference.paged_attention(*args, host_lens)
        return self.native.decode_attention(query, k_cache, v_cache, block_tables, seq_lens, scale)


def rows_in_fp32(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == FP32 and t.is_contiguous() for t in tensors)


def _heads_contiguous(*tensors: torch.Tensor) -> bool:
    """fp32 [tokens, heads, head_dim] whose tokens may step by any stride (views of one
    qkv row), each token's heads contiguous."""
    return all(t.dtype == FP32 and t.stride(2) == 1 and t.stride(1) == t.shape[2] for t in tensors)


def contiguous_int64(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.int64 and t.is_contiguous() for t in tensors)
