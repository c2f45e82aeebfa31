"""The AutoAWQ "GEMM" int4 format: packing, unpacking, round-to-nearest quantization.

For a linear layer with K input and N output features and group size G:
``qweight`` int32 [K, N/8], ``qzeros`` int32 [K/G, N/8], ``scales`` fp16 [K/G, N];
``w[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]`` with q, z in [0, 15]. Eight
4-bit values share an int32; nibble i (bits 4i..4i+3) of packed column c holds column
``8c + AWQ_ORDER[i]`` (AutoAWQ's interleaving, kept so checkpoints load unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# Column j of a group of eight sits in nibble AWQ_UNPACK_ORDER[j].
AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
SHIFTS = torch.arange(8, dtype=torch.int32) * 4


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """[R, C] integers in [0, 15] -> [R, C/8] int32, AWQ-interleaved."""
    rows, cols = values.shape
    assert cols % 8 == 0, "packed dimension must be a multiple of 8"
    nibbles = values.to(torch.int32).view(rows, cols // 8, 8)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int32, device=values.device)
    # One nibble at a time in int32: no int64 copy of the layer (12x faster on a CPU).
    # The top nibble's shift wraps into the sign bit, as two's complement packing wants.
    for i, column in enumerate(AWQ_ORDER):
        packed |= nibbles[..., column] << (4 * i)
    return packed


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[R, C/8] int32 -> [R, C] int32 values in [0, 15] (inverse of pack_int4)."""
    nibbles = (packed[..., None] >> SHIFTS.to(packed.device)) & 0xF
    return nibbles[..., list(AWQ_UNPACK_ORDER)].reshape(packed.shape[0], -1)


@dataclass(frozen=True)
class QuantizedWeight:
    """One linear layer in AutoAWQ GEMM tensors (see the module docstring)."""

    qweight: torch.Tensor  # [K, N/8] int32
    qzeros: torch.Tensor  # [K/G, N/8] int32
    scales: torch.Tensor  # [K/G, N] fp16
    group_size: int


def rtn_codes(
    weight: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest int4 with a zero point, per output channel and input group, in
    fp32: ``(q, zeros, scales)`` of shapes [N, K/G, G], [N, K/G, 1], [N, K/G, 1] for an
    nn.Linear weight [N, K] (out x in). ``(q - zeros) * scales`` is the quantized weight."""
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"group size {group_size} does not divide {in_features} in-features")
    groups = weight.float().reshape(out_features, in_features // group_size, group_size)
    w_max, w_min = groups.amax(-1, keepdim=True), groups.amin(-1, keepdim=True)
    scales = (w_max - w_min).clamp(min=1e-5) / 15
    zeros = (-torch.round(w_min / scales)).clamp(0, 15)
    q = torch.round(groups / scales).add_(zeros).clamp_(0, 15)
    return q, zeros, scales


def quantize_rtn(weight: torch.Tensor, group_size: int) -> QuantizedWeight:
    """``rtn_codes`` packed into AutoAWQ GEMM tensors."""
    q, zeros, scales = rtn_codes(weight, group_size)
    q = q.reshape(weight.shape).to(torch.int32)
    return QuantizedWeight(
        qweight=pack_int4(q.t().contiguous()),
        qzeros=pack_int4(zeros[..., 0].t().contiguous().to(torch.int32)),
        scales=scales[..., 0].t().contiguous().to(torch.float16),
        group_size=group_size,
    )


def dequantize(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """AutoAWQ GEMM tensors -> the float weight, [K, N] (in x out), in ``scales``' dtype."""
    q = unpack_int4(qweight)
    z = unpack_int4(qzeros).repeat_interleave(group_size, dim=0)
    s = scales.repeat_interleave(group_size, dim=0)
    return (q - z).to(scales.dtype) * s
