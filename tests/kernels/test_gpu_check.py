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
import textwrap
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_wheels
from kernels.awq_configs import AWQLaunch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


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

    assert "then SiLU us" in markdown and {r["M"] for r in report["kernels"]["gated"]} == {1, 16}
    assert all(r["equal"] for r in report["kernels"]["gated"])
    # The measured table is Python that kernels/awq_configs.py takes as it stands.
    code = markdown.split("```python\n")[1].split("```")[0]
    namespace = {"AWQLaunch": AWQLaunch, "TABLE": {}, "ARCH": 0}
    exec(code, namespace)
    buckets = namespace["TABLE"][0]
    assert [bound for bound, _ in buckets] == [1, 16, 1 << 30]  # the dry run's M = 1, 16, 64


def test_a_test_run_cut_short_still_reports_the_tests_that_ran(tmp_path):
    """At the end of its time box a step's pytest is stopped as by Ctrl-C: its junit XML
    keeps the tests that finished, and the one still running counts as cut off (pytest
    writes it with no name and no outcome), not as passed."""
    started = tmp_path / "started"
    (tmp_path / "test_blocks.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib, time

            def test_quick():
                pass

            def test_blocks():
                pathlib.Path({str(started)!r}).touch()
                while True:
                    time.sleep(0.01)
            """
        )
    )
    xml = tmp_path / "tests.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    process = subprocess.Popen(
        command + ["--junitxml", str(xml), "test_blocks.py"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not started.exists():  # test_blocks is running (test_quick is done)
        assert process.poll() is None, "pytest ended before test_blocks ran"
        time.sleep(0.01)
    gpu_check.stop(process)
    counts = gpu_check.junit_counts([xml])
    assert counts == {"passed": 1, "failed": 0, "skipped": 0, "interrupted": 1, "failures": []}


def test_the_gpu_tests_skip_the_cpu_kernels_and_bound_each_test(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: object())
    kernels_run, elsewhere = gpu_check.test_commands(tmp_path, cuda=True)
    for command in (kernels_run, elsewhere):
        assert command[command.index("--timeout") + 1] == "90"
        assert "-n" in command  # spread over cores: pytest-xdist is there
    assert kernels_run[kernels_run.index("--ignore-glob") + 1] == "tests/kernels/test_cpu_*.py"
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None)
    assert "-n" not in gpu_check.test_commands(tmp_path, cuda=True)[0]


def test_a_step_past_its_budget_runs_no_further_command(tmp_path):
    never = tmp_path / "never"
    commands = [
        [sys.executable, "-c", "import time; time.sleep(3600)"],  # ends only when stopped
        [sys.executable, "-c", f"open({str(never)!r}, 'w')"],
    ]
    step = gpu_check.run_step("hang", commands, 0.5, dict(os.environ), tmp_path)
    assert step["status"].startswith("timed out")
    assert not never.exists()


def test_the_gpu_machine_gets_what_its_image_lacks_and_nothing_it_has():
    """Without llguidance, av, fastapi, pydantic, ... `import engine` (and so every test)
    fails there; torch, triton, transformers and the rest are its own."""
    wheels = gpu_wheels.carried([*gpu_wheels.runtime_roots(), *gpu_wheels.TEST_NEEDS], "3.12")
    lacking = {"llguidance", "av", "fastapi", "uvicorn", "pydantic", "sse-starlette", "openai"}
    assert lacking <= wheels.keys()
    assert not wheels.keys() & gpu_wheels.IMAGE_HAS
    assert {"torch", "triton", "transformers"} <= gpu_wheels.IMAGE_HAS
