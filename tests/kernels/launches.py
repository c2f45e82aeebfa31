"""Count the kernels a piece of model code launches, without a GPU: every Triton launch
(whichever kernel object runs it: the JIT's on a GPU, the interpreter's on CPU tensors)
and every torch op that would be a kernel on a GPU (anything but views and allocations).
On CPU tensors the dispatchers are forced onto the Triton kernels (under
TRITON_INTERPRET=1), so the count is the one the CUDA path makes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import kernels
import kernels.norm
from kernels import triton_ops

# Allocations launch nothing (torch.empty's memory is not initialized).
NOT_KERNELS = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::lift_fresh"}


@dataclass
class Launches:
    triton: list[str] = field(default_factory=list)  # kernel names, in launch order
    torch: list[str] = field(default_factory=list)  # aten ops that launch a kernel

    @property
    def total(self) -> int:
        return len(self.triton) + len(self.torch)


class _TorchOps(TorchDispatchMode):
    def __init__(self, launches: Launches):
        super().__init__()
        self.launches = launches

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func._schema.name not in NOT_KERNELS:
            self.launches.torch.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def recorded_launches(force_triton: bool) -> Iterator[Launches]:
    """Within the block, record the launches (and still run them). ``force_triton``: CPU
    tensors take the Triton kernels too, as CUDA ones do."""
    launches = Launches()
    kernel_type = type(kernels.norm._rms_norm_kernel)
    original_run = kernel_type.run
    original_ops = kernels._ops

    def run(self, *args, **kwargs):
        launches.triton.append(self.fn.__name__)
        with _disable_current_modes():  # the interpreter's own tensor copies are no launches
            return original_run(self, *args, **kwargs)

    kernel_type.run = run
    if force_triton:
        kernels._ops = lambda tensor: triton_ops
    try:
        with _TorchOps(launches):
            yield launches
    finally:
        kernel_type.run = original_run
        kernels._ops = original_ops
