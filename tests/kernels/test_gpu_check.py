"""`make gpu-check`'s script end to end. Without CUDA (CI) it is the dry run: every step
on tiny shapes, and the static report for Llama-3.2-3B's launches at M = 1, 16 and 64
(the GEMV, split tl.dot and tl.dot buckets of the AWQ table) on sm_87 and sm_90, which
must not spill. On a GPU it would be the whole check: skipped
there (run `make gpu-check` instead). And the wheels `make gpu-wheels` takes there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_wheels

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, run `make gpu-check`")
def test_dry_run_writes_every_section_and_nothing_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-W", "ignore", "benchmarks/gpu_check.py", "--out", str(tmp_path)]
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=600, capture_output=True)
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert not report["device"]["cuda"]
    assert {s["status"] for s in report["steps"].values()} == {"ok"}, report["steps"]
    assert report["tests"]["passed"] > 0 and report["tests"]["failed"] == 0
    assert {r["M"] for r in report["kernels"]["rows"]} == {1, 16, 64}
    assert all("us" in v for r in report["kernels"]["rows"] for v in r["variants"].values())
    assert {r["weights"] for r in report["decode"]["rows"]} == {"fp16", "int4 g128"}
    static = report["static"]["kernels"]
    assert {k["arch"] for k in static} == {"sm_87", "sm_90"}
    assert {"awq_gemv_kernel", "awq_dot_kernel"} <= {k["kernel"] for k in static}
    assert not [k for k in static if k["spill_bytes"]]
    markdown = (tmp_path / "gpu-check.md").read_text()
    assert "| decode | ok |" in markdown and "awq_gemv_kernel" in markdown

    assert "SiLU + GEMV us" in markdown and {r["M"] for r in report["kernels"]["silu_fold"]} == {1}


def test_the_gpu_machine_gets_what_its_image_lacks_and_nothing_it_has():
    """Without llguidance, av, fastapi, pydantic, ... `import engine` (and so every test)
    fails there; torch, triton, transformers and the rest are its own."""
    wheels = gpu_wheels.carried([*gpu_wheels.runtime_roots(), *gpu_wheels.TEST_NEEDS], "3.12")
    lacking = {"llguidance", "av", "fastapi", "uvicorn", "pydantic", "sse-starlette", "openai"}
    assert lacking <= wheels.keys()
    assert not wheels.keys() & gpu_wheels.IMAGE_HAS
    assert {"torch", "triton", "transformers"} <= gpu_wheels.IMAGE_HAS
