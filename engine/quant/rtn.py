"""Round-to-nearest int4 as the searches see it: quantize and dequantize in one step."""

from __future__ import annotations

import torch

from engine.quant.pack import rtn_codes


def fake_quantize(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """The fp32 weight [N, K] that a checkpoint written by ``quantize_rtn(weight)`` holds
    (its scales rounded to fp16 as stored), without packing: what the searches try."""
    q, zeros, scales = rtn_codes(weight, group_size)
    return q.sub_(zeros).mul_(scales.half().float()).reshape(weight.shape)
