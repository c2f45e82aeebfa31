"""Kernels over plain tensors. Each has a torch reference twin (kernels/reference.py)
that serves CPU devices and is the oracle for the Triton versions."""

from kernels.reference import paged_attention, write_kv_cache

__all__ = ["paged_attention", "write_kv_cache"]
