"""Kernel tests: every Triton kernel against its torch twin, on the GPU when there is one,
else in Triton's CPU interpreter on tiny shapes.

tests/conftest.py sets TRITON_INTERPRET=1 where there is no GPU, before triton is first
imported. Kernels take fixed launch configurations (no autotuning), so each runs once.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

DEVICES = [
    pytest.param(
        "cpu", marks=pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1")
    ),
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
    ),
]

# (atol, rtol) of a kernel against its twin, for outputs of magnitude ~1.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    atol, rtol = TOLERANCES[theirs.dtype]
    torch.testing.assert_close(ours.float(), theirs.float(), atol=atol, rtol=rtol)
