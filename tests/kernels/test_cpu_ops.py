"""The C ops between the linears (kernels/cpu_decode_ops.c through kernels/cpu_ops.py)
against their torch twins (kernels/reference.py), as this CPU compiles them and as the
portable C build does, on 1 and 2 threads; and what falls back to the twins."""

from __future__ import annotations

import pytest
import torch

import kernels
from engine.layers.cpu_quant import native_kernels
from kernels import cpu_native, reference
from kernels.cpu_ops import NativeCpuOps
from tests.kernels.test_cpu_attention import batch
from tests.kernels.test_cpu_native import PORTABLE_FLAG

# Sums in another order, and e^x within about 1 ulp (softmax, SiLU).
TOLERANCE = dict(atol=2e-6, rtol=2e-6)


@pytest.fixture(scope="module", params=["native", "portable"])
def ops(request, tmp_path_factory) -> NativeCpuOps:
    if request.param == "native":
        built = native_kernels()
        assert built is not None, "the native CPU kernels did not build (see the warning)"
    else:
        built = cpu_native.load(tmp_path_factory.mktemp("portable"), PORTABLE_FLAG)
    return NativeCpuOps(built)


@pytest.fixture(params=[1, 2], autouse=True)
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("rows, hidden", [(1, 896), (7, 64), (300, 128)])  # 300: threaded
def test_rms_norms(ops, rows, hidden):
    x, residual = torch.randn(rows, hidden) * 3, torch.randn(rows, hidden)
    weight = torch.randn(hidden)
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6))
    norm, summed = ops.add_rms_norm(x, residual, weight, 1e-5)
    expected_norm, expected_sum = reference.add_rms_norm(x, residual, weight, 1e-5)
    torch.testing.assert_close(norm, expected_norm, **TOLERANCE)
    assert torch.equal(summed, expected_sum)


def test_silu_and_mul_over_the_whole_range(ops):
    gate = torch.cat([torch.linspace(-120, 120, 2001), torch.randn(2001) * 4])
    x = torch.stack([torch.cat([gate, torch.randn(4002)]) for _ in range(9)])  # [9, 2 * 4002]
    ours, theirs = ops.silu_and_mul(x), reference.silu_and_mul(x)
    torch.testing.assert_close(ours, theirs, atol=1e-30, rtol=2e-6)


def qkv_views(tokens: int, heads: int, kv_heads: int, head_dim: int):
    """q, k, v as the attention layer has them: views of one row of the fused qkv output"""
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    return (
        q.view(tokens, heads, head_dim),
        k.view(tokens, kv_heads, head_dim),
        v.view(tokens, kv_heads, head_dim),
    )


@pytest.mark.parametrize("tokens, heads, kv_heads, head_dim", [(1, 14, 2, 64), (37, 4, 4, 128)])
def test_rotary_and_kv_write(ops, tokens, heads, kv_heads, head_dim):
    q, k, v = qkv_views(tokens, heads, kv_heads, head_dim)
    angles = torch.randn(50, head_dim // 2) * 10
    cos, sin = angles.cos(), angles.sin()
    rows = torch.randint(0, 50, (tokens,))
    slots = torch.randperm(8 * 16)[:tokens]
    slots[::3] = -1  # padding rows: their queries rotate, nothing is written
    caches = [torch.randn(8, 16, kv_heads, head_dim) for _ in range(2)]
    ours, theirs = [c.clone() for c in caches], caches
    out = ops.rotary_write_kv_cache(rows, q, k, v, cos, sin, *ours, slots)
    expected = reference.rotary_write_kv_cache(rows, q, k, v, cos, sin, *theirs, slots)
    torch.testing.assert_close(out, expected, **TOLERANCE)
    torch.testing.assert_close(ours[0], theirs[0], **TOLERANCE)
    assert torch.equal(ours[1], theirs[1])


@pytest.mark.parametrize(
    "seq_lens, heads, kv_heads, head_dim",
    [
        ([1], 14, 2, 64),
        ([33], 14, 2, 64),  # Qwen2-0.5B's heads
        ([17, 200, 5, 64], 14, 2, 64),
        ([2048], 8, 8, 128),
        ([40, 41, 3000], 4, 1, 8),
    ],
)
def test_decode_attention_equals_the_twin(ops, seq_lens, heads, kv_heads, head_dim):
    """One query a sequence over shuffled blocks of 16 (kernels/test_cpu_attention.py's
    batches: unused blocks NaN), grouped heads and not."""
    pool = sum(-(-n // 16) for n in seq_lens) + 3
    args = batch(seq_lens, [1] * len(seq_lens), heads, torch.float32, kv_heads, head_dim, 16, pool)
    ours = ops.paged_attention(*args)
    torch.testing.assert_close(ours, reference.paged_attention(*args), **TOLERANCE)


def test_what_the_c_does_not_take_runs_the_twins(ops, monkeypatch):
    """bf16, prefills and int32 positions go to the twins (the C is never called)."""
    monkeypatch.setattr(ops, "native", None)  # any call into it would fail
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    weight = torch.ones(64, dtype=torch.bfloat16)
    assert torch.equal(ops.rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6))
    assert torch.equal(ops.silu_and_mul(x), reference.silu_and_mul(x))
    prefill = batch([9, 30], [9, 4], 4, torch.float32)
    assert torch.equal(ops.paged_attention(*prefill), reference.paged_attention(*prefill))
    q, k, v = qkv_views(2, 4, 4, 64)
    cos, sin = torch.ones(4, 32), torch.zeros(4, 32)
    caches = [torch.zeros(1, 16, 4, 64) for _ in range(2)]
    rows = torch.tensor([0, 1], dtype=torch.int32)
    slots = torch.tensor([0, 1])
    out = ops.rotary_write_kv_cache(rows, q, k, v, cos, sin, *caches, slots)
    assert torch.equal(out, q) and torch.equal(caches[1][0, :2], v)


def test_the_dispatchers_take_the_c_ops_once_given(ops, monkeypatch):
    called = []
    monkeypatch.setattr(ops.native, "silu_and_mul", lambda x: called.append(x) or x[..., :1])
    x = torch.randn(2, 8)
    try:
        kernels.use_native_cpu_ops(ops.native)
        kernels.silu_and_mul(x)
        assert len(called) == 1
    finally:
        kernels.use_native_cpu_ops(None)
    assert torch.equal(kernels.silu_and_mul(x), reference.silu_and_mul(x)) and len(called) == 1
