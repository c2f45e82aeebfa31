"""The kernel launches of one decoder layer (and the LM head's input norm) of real model
shapes, made by the real wrappers on uninitialized CPU tensors: under
static_compile.recorded_launches they record what a GPU would compile. Shared by
kernel_static.py, which compiles them. For M <= 8 both the GEMV's and the tl.dot
GEMM's launches are recorded, whichever the table picks: the report compares them."""

from __future__ import annotations

import torch
import triton

from kernels import triton_ops
from kernels.awq_configs import GEMV_LAUNCHES, GEMV_MAX_M, awq_launch_for
from kernels.awq_gemm import awq_linear_with
from kernels.paged_decode import decode_attention, default_num_splits

# hidden, intermediate, heads, KV heads; head_dim 128 and AWQ group size 128 for all.
MODELS = {
    "Llama-3-8B": dict(hidden=4096, intermediate=14336, num_heads=32, num_kv_heads=8),
    "Llama-3.2-3B": dict(hidden=3072, intermediate=8192, num_heads=24, num_kv_heads=8),
}
ROWS = (1, 2, 4, 8, 16, 32, 64, 256, 1024)  # tokens in a step: one per bucket of the table
HEAD_DIM, GROUP_SIZE, BLOCK_SIZE, MAX_MODEL_LEN = 128, 128, 16, 8192


def linear_shapes(model: dict) -> dict[str, tuple[int, int]]:
    """The fused decoder linears as the engine builds them: name -> (K, N)."""
    hidden, inter = model["hidden"], model["intermediate"]
    qkv = (model["num_heads"] + 2 * model["num_kv_heads"]) * HEAD_DIM
    return {
        "qkv_proj": (hidden, qkv),
        "o_proj": (model["num_heads"] * HEAD_DIM, hidden),
        "gate_up_proj": (hidden, 2 * inter),
        "down_proj": (inter, hidden),
    }


def record_model_launches(
    model: dict, dtype: torch.dtype, rows: tuple[int, ...], arch: int, num_sms: int
) -> None:
    for num_rows in rows:
        for name, (in_features, out_features) in linear_shapes(model).items():
            # gate_up's launch also computes SiLU·mul (awq_linear_silu_mul)
            gated = name == "gate_up_proj"
            _awq(num_rows, in_features, out_features, dtype, arch, num_sms, gated)
        _layer_elementwise(model, num_rows, dtype)
        _attention(model, num_rows, dtype, num_sms)


def _awq(num_rows, in_features, out_features, dtype, arch, num_sms, gated) -> None:
    x = torch.empty(num_rows, in_features, dtype=dtype)
    launches = [awq_launch_for(arch, num_rows, GROUP_SIZE)]
    if num_rows <= GEMV_MAX_M:  # both variants can run here: compare them
        gemv = GEMV_LAUNCHES[triton.next_power_of_2(num_rows)]
        launches += [gemv, awq_launch_for(arch, GEMV_MAX_M + 1, GROUP_SIZE)]
    for launch in dict.fromkeys(launches):
        weights = _awq_weights(in_features, out_features, dtype)
        awq_linear_with(x, *weights, launch, num_sms, gated)


def _awq_weights(in_features: int, out_features: int, dtype: torch.dtype) -> tuple:
    """qweight, qzeros, scales, group size, bias."""
    qweight = torch.empty(in_features, out_features // 8, dtype=torch.int32)
    qzeros = torch.empty(in_features // GROUP_SIZE, out_features // 8, dtype=torch.int32)
    scales = torch.empty(in_features // GROUP_SIZE, out_features, dtype=dtype)
    return qweight, qzeros, scales, GROUP_SIZE, None


def _layer_elementwise(model: dict, num_rows: int, dtype: torch.dtype) -> None:
    hidden, heads, kv_heads = model["hidden"], model["num_heads"], model["num_kv_heads"]
    x = torch.empty(num_rows, hidden, dtype=dtype)
    weight = torch.empty(hidden, dtype=dtype)
    triton_ops.rms_norm(x, weight, 1e-5)
    triton_ops.add_rms_norm(x, x, weight, 1e-5)
    triton_ops.silu_and_mul(torch.empty(num_rows, 2 * model["intermediate"], dtype=dtype))
    query, key, value = _qkv_views(num_rows, heads, kv_heads, dtype)
    cos = torch.empty(MAX_MODEL_LEN, HEAD_DIM // 2)
    positions = torch.empty(num_rows, dtype=torch.int64)
    k_cache = torch.empty(4, BLOCK_SIZE, kv_heads, HEAD_DIM, dtype=dtype)
    slots = torch.empty(num_rows, dtype=torch.int64)
    triton_ops.rotary_write_kv_cache(
        positions, query, key, value, cos, cos, k_cache, k_cache, slots
    )


def _attention(model: dict, num_rows: int, dtype: torch.dtype, num_sms: int) -> None:
    heads, kv_heads = model["num_heads"], model["num_kv_heads"]
    k_cache = torch.empty(4, BLOCK_SIZE, kv_heads, HEAD_DIM, dtype=dtype)
    max_blocks = MAX_MODEL_LEN // BLOCK_SIZE
    if num_rows <= 64:  # a decode batch of num_rows sequences (rotary's output: contiguous)
        query = torch.empty(num_rows, heads, HEAD_DIM, dtype=dtype)
        tables = torch.empty(num_rows, max_blocks, dtype=torch.int32)
        seq_lens = torch.empty(num_rows, dtype=torch.int32)
        splits = default_num_splits(num_rows, kv_heads, max_blocks * BLOCK_SIZE, num_sms)
        decode_attention(query, k_cache, k_cache, tables, seq_lens, 0.1, splits)
    if num_rows > 1:  # one prompt of num_rows tokens
        query = torch.empty(num_rows, heads, HEAD_DIM, dtype=dtype)
        tables = torch.empty(1, max_blocks, dtype=torch.int32)
        seq_lens = torch.empty(1, dtype=torch.int32)
        starts = torch.tensor([0, num_rows], dtype=torch.int32)
        triton_ops.paged_attention(query, k_cache, k_cache, tables, seq_lens, starts, 0.1)


def _qkv_views(num_rows: int, heads: int, kv_heads: int, dtype: torch.dtype):
    """Query, key and value as the model passes them: views into the fused qkv output."""
    qkv = torch.empty(num_rows, (heads + 2 * kv_heads) * HEAD_DIM, dtype=dtype)
    query = qkv[:, : heads * HEAD_DIM].view(num_rows, heads, HEAD_DIM)
    key = qkv[:, heads * HEAD_DIM : (heads + kv_heads) * HEAD_DIM]
    value = qkv[:, (heads + kv_heads) * HEAD_DIM :]
    return query, key.view(num_rows, kv_heads, HEAD_DIM), value.view(num_rows, kv_heads, HEAD_DIM)
