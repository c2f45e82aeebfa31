"""Every kernel, launched as its wrapper launches it, compiles for sm_87 and sm_90."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_compile_for_orin_and_h100():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "tests.kernels.gpu_compile"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
