"""bench_kernels in the one-shot GPU run: a launch that fails there (a candidate's tiles
too big for that GPU, say) is recorded and the rest are still timed; one failure must
not cost the step every measurement after it."""

from __future__ import annotations

import torch

from benchmarks import bench_kernels


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
