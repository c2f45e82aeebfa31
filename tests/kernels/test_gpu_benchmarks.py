"""The GPU benchmarks of the one-shot GPU run (`make gpu-check`), where the GPU path runs
for the first time: what fails there (a candidate launch too big for that GPU, a kernel
that breaks on a real model) is recorded, and the rest is still measured; one failure
must not cost the step every measurement after it."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from benchmarks import bench_decode, bench_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from gpu_check_report import markdown  # noqa: E402


def test_a_launch_that_fails_is_recorded_and_the_others_are_timed(monkeypatch):
    ours = bench_kernels.awq_linear_with

    def dot_fails(x, qweight, qzeros, scales, group_size, bias, launch, *rest):
        if launch.variant == "dot":
            raise RuntimeError("out of resources: shared memory")
        return ours(x, qweight, qzeros, scales, group_size, bias, launch, *rest)

    monkeypatch.setattr(bench_kernels, "awq_linear_with", dot_fails)
    [row] = bench_kernels.bench_shape(128, 256, [1], torch.float32, torch.device("cpu"), None)
    dot = {name: v for name, v in row["variants"].items() if name.startswith("dot")}
    gemv = {name: v for name, v in row["variants"].items() if name.startswith("gemv")}
    assert dot and all("out of resources" in v["failed"] for v in dot.values())
    assert gemv and all("us" in v for v in gemv.values())
    assert bench_kernels.best_per_rows([row])[1][0].startswith("gemv")


def test_a_decode_that_fails_is_recorded_and_the_others_are_measured(monkeypatch):
    ours = bench_decode.steps_per_s

    def int4_fails(model, batch, device, num_steps):
        if any("qweight" in name for name, _ in model.named_buffers()):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return ours(model, batch, device, num_steps)

    monkeypatch.setattr(bench_decode, "steps_per_s", int4_fails)
    report = bench_decode.run(list(bench_decode.MODELS), [1], out=None)
    by_weights = {r["weights"]: r for r in report["rows"]}
    assert by_weights.keys() == {"fp16", "int4 g128"}
    assert by_weights["fp16"]["tok_s"] > 0
    assert "illegal memory access" in by_weights["int4 g128"]["error"]
    table = markdown(
        {
            "device": {"name": "cpu", "torch": "-", "triton": "-", "cuda": False},
            "steps": {},
            "tests": None,
            "kernels": None,
            "decode": report,
            "static": None,
        }
    )
    assert "| int4 g128 | 1 | failed: `RuntimeError('CUDA error: an illegal" in table


def test_a_gemlite_that_does_not_import_is_said_and_skipped(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gemlite.core", None)  # import raises ImportError
    assert not bench_kernels.gemlite_importable()
    assert "gemlite not timed" in capsys.readouterr().out
