"""W4A16 linear over the AutoAWQ GEMM layout as stored on disk (no repack at load):
``out = x @ dequantize(qweight, qzeros, scales) + bias``, fp32 accumulation.

kernels/awq_configs.py picks the variant and launch per GPU and number of rows; this
module sizes the grid (splitting K when the output tiles alone cannot fill the GPU) and
launches it.
"""

from __future__ import annotations

import functools

import torch
import triton

from kernels.activation import silu_and_mul
from kernels.awq_common import TWO_POW_23_BITS
from kernels.awq_configs import GEMV_MAX_M, AWQLaunch, awq_launch_for
from kernels.awq_dequant import dequantize
from kernels.awq_dot import awq_dot_kernel
from kernels.awq_gemv import awq_gemv_kernel
from kernels.triton_utils import dot_operands, num_sms

MAX_SPLIT_K = 32
PROGRAMS_PER_SM = 4  # enough programs in flight per SM to keep its memory pipes busy


@functools.cache
def compute_capability(device: torch.device) -> int | None:
    """major * 10 + minor of a CUDA device; None for the interpreter's CPU tensors."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


# NOTE: both stay all-zero between launches (the last program of each tile re-zeroes its
# part), so CUDA graphs replay them without a memset. They are allocated at the first
# launch of a size, which the eager warm-up step before each graph capture makes.
@functools.cache
def _workspace(device: torch.device, num_floats: int) -> torch.Tensor:
    return torch.zeros(num_floats, dtype=torch.float32, device=device)


@functools.cache
def _counters(device: torch.device, num_tiles: int) -> torch.Tensor:
    return torch.zeros(num_tiles, dtype=torch.int32, device=device)


@functools.cache
def _two_pow_23_bits(device: torch.device) -> torch.Tensor:
    """What the kernels OR their nibbles into, as memory (awq_common.unpack_int4_biased)."""
    return torch.full((1,), TWO_POW_23_BITS.value, dtype=torch.int32, device=device)


def awq_linear(
    x: torch.Tensor,  # [..., K] fp16 / bf16 / fp32
    qweight: torch.Tensor,  # [K, N/8] int32
    qzeros: torch.Tensor,  # [K/G, N/8] int32
    scales: torch.Tensor,  # [K/G, N]
    group_size: int,
    bias: torch.Tensor | None = None,  # [N]
) -> torch.Tensor:  # [..., N] in x's dtype
    launch = _table_launch(x, group_size)
    return awq_linear_with(x, qweight, qzeros, scales, group_size, bias, launch, num_sms(x.device))


def awq_linear_silu_mul(
    x: torch.Tensor,  # [..., K]
    qweight: torch.Tensor,  # [K, N/8] int32: a gate | up weight, each half N/2 wide
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # [..., N/2]
    """``silu_and_mul(awq_linear(x, ...))``: a gate_up projection and its activation, in
    one launch (the kernels' GATED epilogue) but where the table dequantizes for cuBLAS
    or there is a bias."""
    launch, sms = _table_launch(x, group_size), num_sms(x.device)
    if bias is not None:  # none in the models served (Llama and Qwen MLPs have no bias)
        return silu_and_mul(
            awq_linear_with(x, qweight, qzeros, scales, group_size, bias, launch, sms)
        )
    return awq_linear_with(x, qweight, qzeros, scales, group_size, None, launch, sms, gated=True)


def _table_launch(x: torch.Tensor, group_size: int) -> AWQLaunch:
    num_rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return awq_launch_for(compute_capability(x.device), num_rows, group_size)


def split_k_for(num_tiles: int, num_k_steps: int, num_sms: int) -> int:
    """K splits that bring ``num_tiles`` output tiles up to a few programs per SM, with
    no split left empty."""
    wanted = triton.cdiv(PROGRAMS_PER_SM * num_sms, num_tiles)
    split_k = max(1, min(wanted, num_k_steps, MAX_SPLIT_K))
    return triton.cdiv(num_k_steps, triton.cdiv(num_k_steps, split_k))


def awq_linear_with(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
    launch: AWQLaunch,
    num_sms: int,
    gated: bool = False,
) -> torch.Tensor:
    """``awq_linear`` with the variant and launch given (benchmarks, the static report);
    ``gated``: ``awq_linear_silu_mul`` (no bias)."""
    in_features, out_features = qweight.shape[0], scales.shape[1]
    assert x.shape[-1] == in_features and in_features % group_size == 0
    assert qweight.stride(1) == 1 and qzeros.stride(1) == 1 and scales.stride(1) == 1
    assert not gated or (bias is None and out_features % 16 == 0), "halves of whole words"
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    num_rows = x2.shape[0]
    width = out_features // 2 if gated else out_features  # the output's
    if launch.variant == "dequant_matmul":
        weight = dequantize(qweight, qzeros, scales, group_size).to(x.dtype)
        out = x2 @ weight if bias is None else torch.addmm(bias.to(x.dtype), x2, weight)
        out = silu_and_mul(out) if gated else out
        return out.view(*x.shape[:-1], width)
    out = torch.empty(num_rows, width, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out.view(*x.shape[:-1], width)
    is_gemv = launch.variant == "gemv"
    assert not is_gemv or num_rows <= GEMV_MAX_M
    block_m = triton.next_power_of_2(num_rows) if is_gemv else launch.block_m
    num_m_tiles = triton.cdiv(num_rows, block_m)
    # A gated tile holds block_n / 2 columns of each half (awq_common.gate_up_column).
    num_n_tiles = triton.cdiv(width, launch.block_n // 2 if gated else launch.block_n)
    # The GEMV splits K by whole groups, the tiled GEMM by K tiles.
    num_k_steps = in_features // (group_size if is_gemv else launch.block_k)
    split_k = 1
    if num_rows <= 16:  # decode-sized: the output tiles alone leave SMs idle
        split_k = split_k_for(num_m_tiles * num_n_tiles, num_k_steps, num_sms)
    num_tiles = num_m_tiles * num_n_tiles
    workspace = counters = out
    if split_k > 1:
        workspace = _workspace(x.device, triton.next_power_of_2(num_rows * out_features))
        counters = _counters(x.device, triton.next_power_of_2(num_tiles))
    common = (
        x2,
        qweight,
        qzeros,
        scales,
        bias if bias is not None else scales,
        out,
        workspace,
        counters,
        num_rows,
        out_features,
        x2.stride(0),
        qweight.stride(0),
        qzeros.stride(0),
        scales.stride(0),
        qweight.shape[1],
        split_k,
        triton.cdiv(num_k_steps, split_k),
        num_k_steps,
        _two_pow_23_bits(x.device),
        width // 8,  # GATED: each half's packed words
    )
    flags = dict(
        GROUP_SIZE=group_size,
        HAS_BIAS=bias is not None,
        IS_SPLIT=split_k > 1,
        BLOCK_M=block_m,
        BLOCK_N=launch.block_n,
        BLOCK_K=launch.block_k,
        num_warps=launch.num_warps,
        num_stages=launch.num_stages,
        GATED=gated,
    )
    if is_gemv:
        awq_gemv_kernel[(num_n_tiles, split_k)](*common, **flags)
    else:
        dot_dtype, precision = dot_operands(x.dtype)
        awq_dot_kernel[(num_tiles, split_k)](
            *common,
            num_m_tiles,
            num_n_tiles,
            **flags,
            GROUP_M=launch.group_m,
            DOT_DTYPE=dot_dtype,
            PRECISION=precision,
        )
    return out.view(*x.shape[:-1], width)
