"""The static kernel report: every launch of a real model's shapes compiles for sm_87 and
sm_90 with the runtime's specializations, and none spills registers (a spill exits 1).
One model, fp16, three row counts: the full report is `make gpu-check`'s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from static_compile import _loop_length, _sass_branch, _sass_label  # noqa: E402

SASS_LOOP = """
        /*0010*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0020*/                   LOP3.LUT R2, R3, 0xf, RZ, 0xc0, !PT ;
        /*0030*/                   FADD R2, R2, -8388608 ;
        /*0040*/                   FFMA R4, R2, R5, R4 ;
        /*0050*/               @P0 BRA `(.L_x_1) ;
        /*0060*/                   EXIT ;
"""


def test_loop_length_counts_the_body_of_the_backward_branch():
    assert _loop_length(SASS_LOOP.splitlines(), _sass_label, _sass_branch) == 4


def test_report_compiles_every_launch_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "kernel-static.json"
    command = [sys.executable, "-W", "ignore", str(ROOT / "benchmarks/kernel_static.py")]
    command += ["--quick", "--models", "Llama-3.2-3B", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=900, capture_output=True)
    kernels = json.loads(out.read_text())["kernels"]
    compiled = {(k["arch"], k["kernel"]) for k in kernels}
    for arch in ("sm_87", "sm_90"):
        for name in ("awq_gemv_kernel", "awq_dot_kernel", "_decode_split_kernel", "_rotary_kernel"):
            assert (arch, name) in compiled
    gemv = [k for k in kernels if k["kernel"] == "awq_gemv_kernel"]
    assert all(2 < k["ptx_per_weight"] < 40 for k in gemv)
