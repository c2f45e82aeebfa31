"""What the Triton kernels share: operand types for ``tl.dot`` and the launch-size facts
of the device. Imports triton, so only the kernel modules import it."""

from __future__ import annotations

import functools
import os

import torch
import triton.language as tl

TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def interpreting() -> bool:
    """Whether kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def dot_operands(dtype: torch.dtype) -> tuple[tl.dtype, str]:
    """The operand type and input precision of ``tl.dot`` for activations of ``dtype``.

    fp32 operands get "ieee": the default would round them to TF32 (a 10-bit mantissa),
    and fp32 runs exist to check against the reference. The interpreter computes bf16
    dots wrongly (numpy has no bf16), so there bf16 operands are widened to fp32; on a
    GPU they stay bf16 for the tensor cores.
    """
    if dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting()):
        return tl.float32, "ieee"
    return TL_DTYPES[dtype], "tf32"  # the precision is ignored for 16-bit operands


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors to fill; 1 under the interpreter (one program at a time)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count
