"""RMSNorm (with and without the residual add), rotary embedding and SiLU-and-mul
against their torch twins, on widths that are not powers of two."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.activation import silu_and_mul
from kernels.norm import add_rms_norm, rms_norm
from kernels.rotary import rotary_embedding
from tests.kernels.conftest import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(5, 96, device=device).to(dtype)
    residual = torch.randn(5, 96, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(96, device=device)).to(dtype)
    assert_close(rms_norm(x, weight, 1e-5), reference.rms_norm(x, weight, 1e-5))
    ours = add_rms_norm(x, residual, weight, 1e-5)
    theirs = reference.add_rms_norm(x, residual, weight, 1e-5)
    assert_close(ours[0], theirs[0])
    assert_close(ours[1], theirs[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_embedding(device, dtype):
    torch.manual_seed(0)
    num_heads, num_kv_heads, head_dim = 6, 2, 40
    qkv = torch.randn(7, (num_heads + 2 * num_kv_heads) * head_dim, device=device).to(dtype)
    query = qkv[:, : num_heads * head_dim].view(7, num_heads, head_dim)
    key = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim]
    key = key.view(7, num_kv_heads, head_dim)
    angles = torch.rand(64, head_dim // 2, device=device) * 6.3
    positions = torch.tensor([0, 3, 63, 7, 7, 1, 40], device=device)
    ours = rotary_embedding(positions, query, key, angles.cos(), angles.sin())
    theirs = reference.rotary_embedding(positions, query, key, angles.cos(), angles.sin())
    assert_close(ours[0], theirs[0])
    assert_close(ours[1], theirs[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 2 * 1100, device=device).to(dtype)  # two column blocks, ragged
    assert_close(silu_and_mul(x), reference.silu_and_mul(x))
