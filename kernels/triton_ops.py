"""The Triton kernels under the dispatchers' names (imports triton)."""

from kernels.activation import silu_and_mul
from kernels.attention import paged_attention
from kernels.awq_gemm import awq_linear, awq_linear_silu_mul
from kernels.norm import add_rms_norm, rms_norm
from kernels.rotary import rotary_embedding
from kernels.rotary_kv import rotary_write_kv_cache

__all__ = [
    "add_rms_norm",
    "awq_linear",
    "awq_linear_silu_mul",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "rotary_write_kv_cache",
    "silu_and_mul",
]
