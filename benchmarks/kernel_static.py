"""Static report of the Triton kernels, without a GPU: every kernel and launch configuration
the runtime would launch for real Llama-3-8B / Llama-3.2-3B shapes, compiled for sm_87
(Jetson Orin) and sm_90 (H100/H200) with the installed Triton and the JIT's own argument
specializations (ints equal to 1 or divisible by 16, 16-byte-aligned pointers: the binder
the runtime uses computes them). Reports registers, spills and shared memory (from ptxas)
and, for the W4A16 kernels, instructions per weight in the inner loop (PTX and SASS).

This is a proxy, not a speed figure: fewer instructions per weight and no spills make a
fast kernel more likely; only a GPU says how fast.

    .venv/bin/python benchmarks/kernel_static.py [--out kernel-static.json] [--quick]

With another Triton, as a target runs it (the Jetson image's 3.4.0, the lent H200's
3.6.0; 3.4 to 3.7 work), installed beside the venv's:

    pip install --no-deps --target /tmp/triton-3.4.0 triton==3.4.0
    PYTHONPATH=/tmp/triton-3.4.0 .venv/bin/python benchmarks/kernel_static.py --archs 87

Exits 1 if any kernel spills. Needs TRITON_INTERPRET unset (it compiles, never runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from static_compile import compile_launch, recorded_launches
from static_shapes import MODELS, ROWS, record_model_launches

ARCHS = (87, 90)
# SMs of the GPU each arch stands for (AGX Orin, H100 SXM): K-split counts depend on it.
NUM_SMS = {87: 16, 90: 132}


def build_report(
    models: list[str], dtypes: list[str], rows: tuple[int, ...], archs: tuple[int, ...] = ARCHS
) -> dict:
    import torch

    results = []
    seen = set()
    start = time.perf_counter()
    for arch in archs:
        for model in models:
            for dtype in dtypes:
                with recorded_launches() as launches:
                    record_model_launches(
                        MODELS[model], getattr(torch, dtype), rows, arch, NUM_SMS[arch]
                    )
                for launch in launches:
                    key = (arch, launch.cache_key(arch))
                    if key in seen:
                        continue
                    seen.add(key)
                    results.append(compile_launch(launch, arch) | {"model": model})
    return {
        "note": "static proxy (compiled, never run): not a speed figure",
        "triton": __import__("triton").__version__,
        "archs": [f"sm_{a}" for a in archs],
        "num_sms_assumed": {f"sm_{a}": n for a, n in NUM_SMS.items()},
        "compile_s": round(time.perf_counter() - start, 1),
        "kernels": results,
    }


def markdown(report: dict) -> str:
    lines = [
        f"Static kernel report (Triton {report['triton']}; compiled, never run: a proxy, "
        "not a speed figure)",
        "",
        "| arch | kernel | launch | regs | spills (B) | smem (B) | PTX/weight | SASS/weight |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in report["kernels"]:
        per_weight = [k.get("ptx_per_weight"), k.get("sass_per_weight")]
        shown = ["-" if v is None else f"{v:.2f}" for v in per_weight]
        lines.append(
            f"| {k['arch']} | {k['kernel']} | {k['launch']} | {k['registers']} | "
            f"{k['spill_bytes']} | {k['shared_bytes']} | {shown[0]} | {shown[1]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the report here as JSON (.md beside)")
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--rows", nargs="+", type=int, default=list(ROWS))
    parser.add_argument("--archs", nargs="+", type=int, default=list(ARCHS), choices=ARCHS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fp16, M in (1, 16, 64) only: one launch of each AWQ table bucket",
    )
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("0", ""):
        sys.exit("kernel_static.py compiles for GPUs: unset TRITON_INTERPRET")
    rows = (1, 16, 64) if args.quick else tuple(args.rows)
    dtypes = ["float16"] if args.quick else args.dtypes
    report = build_report(args.models, dtypes, rows, tuple(args.archs))
    table = markdown(report)
    print(table)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(table)
    spilling = [k for k in report["kernels"] if k["spill_bytes"]]
    if spilling:
        sys.exit(f"{len(spilling)} kernel configurations spill registers")


if __name__ == "__main__":
    main()
