"""The dispatchers: CPU tensors take the torch twins without ever importing triton."""

from __future__ import annotations

import subprocess
import sys
from types import FunctionType

CHECK = """
import sys
import torch
import kernels

x = torch.randn(3, 8)
out = kernels.rms_norm(x, torch.ones(8), 1e-5)
assert torch.equal(out, kernels.reference.rms_norm(x, torch.ones(8), 1e-5))
assert "triton" not in sys.modules, "importing or calling kernels on CPU imported triton"
"""


def test_cpu_path_never_imports_triton():
    subprocess.run([sys.executable, "-c", CHECK], check=True, timeout=120)


def test_kernel_modules_do_not_shadow_the_dispatchers():
    # Importing kernels.X binds the submodule as attribute X of the package: no kernel
    # module may share a dispatcher's name.
    import kernels
    import kernels.triton_ops  # noqa: F401  (imports every kernel module)

    assert all(isinstance(getattr(kernels, name), FunctionType) for name in kernels.__all__)
