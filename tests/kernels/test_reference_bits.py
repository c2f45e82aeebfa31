"""The CPU twins that were rewritten for fewer ops per call still give transformers' bits:
RMSNorm (fp32 through torch's rms_norm, bf16 through the explicit formula) and the rotary
(queries and keys rotated together, the halves' products as rotate_half forms them)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from kernels import reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 896), (7, 96), (5, 14, 64)])
def test_rms_norm_is_transformers_bit_for_bit(dtype, shape):
    torch.manual_seed(0)
    norm = LlamaRMSNorm(shape[-1], eps=1e-6).to(dtype)
    norm.weight.data.normal_()
    x, residual = (torch.randn(shape) * 3).to(dtype), torch.randn(shape).to(dtype)
    with torch.no_grad():
        assert torch.equal(reference.rms_norm(x, norm.weight, 1e-6), norm(x))
        out, summed = reference.add_rms_norm(x, residual, norm.weight, 1e-6)
        assert torch.equal(summed, x + residual) and torch.equal(out, norm(x + residual))


@pytest.mark.parametrize("num_tokens", [1, 9])
def test_rotary_is_transformers_bit_for_bit(num_tokens):
    torch.manual_seed(1)
    head_dim, max_position = 64, 512
    qkv = torch.randn(num_tokens, (14 + 2 * 2) * head_dim)
    # views into one fused projection, as the model passes them
    query = qkv[:, : 14 * head_dim].view(num_tokens, 14, head_dim)
    key = qkv[:, 14 * head_dim : 16 * head_dim].view(num_tokens, 2, head_dim)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(max_position).float(), inv_freq)
    positions = torch.randint(0, max_position, (num_tokens,))
    ours = reference.rotary_embedding(positions, query, key, angles.cos(), angles.sin())
    full = torch.cat((angles, angles), dim=-1)[positions]  # transformers' [num_tokens, head_dim]
    theirs = apply_rotary_pos_emb(query, key, full.cos(), full.sin(), unsqueeze_dim=1)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
