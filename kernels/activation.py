"""SiLU-and-multiply of the fused gate/up output: one pass instead of three."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def silu_mul(gate, up):
    """SiLU(gate) * up in fp32; the W4A16 kernels' GATED epilogue computes it as this does."""
    return gate / (1.0 + tl.exp(-gate)) * up


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [num_tokens, 2 * width]: gate | up, rows stride_x apart
    out_ptr,  # [num_tokens, width]
    stride_x,
    width,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < width
    gate = tl.load(x_ptr + token * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + token * stride_x + width + offs, mask=mask, other=0.0).to(tl.float32)
    out = silu_mul(gate, up).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + token * width + offs, out, mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # [..., 2 * width] -> [..., width]
    width = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * width)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape[0], width, dtype=x.dtype, device=x.device)
    if x2.shape[0]:
        grid = (x2.shape[0], triton.cdiv(width, BLOCK))
        _silu_and_mul_kernel[grid](x2, out, x2.stride(0), width, BLOCK=BLOCK)
    return out.view(*x.shape[:-1], width)
