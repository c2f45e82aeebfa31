"""Every W4A16 variant and launch candidate against fp16 ``torch.matmul`` (cuBLAS), and
gemlite's W4A16 when it is importable, on Llama-3-8B's layer shapes at M = 1 ... 1024.
Prints the measured times and the fastest launch per M bucket: the table to commit to
kernels/awq_configs.py for this GPU. For gate_up's shape at decode sizes (M <= 16) it
also times the table's launch with SiLU·mul in its epilogue (GATED, as the engine runs
it) against the same launch followed by the SiLU kernel.

Goals: >= 3.3x fp16's speed at M = 1 (a quarter of the bytes), >= 0.85x at M = 1024.
Times are medians of ``triton.testing.do_bench``, which clears the L2 cache between
runs, so every call streams its weight from DRAM as decode does. Without CUDA it runs
the same code on tiny shapes in Triton's interpreter (a check that it works; its
numbers mean nothing).

    python benchmarks/bench_kernels.py [--out kernels.json] [--dtype float16]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # NOTE: before anything imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import reference  # noqa: E402
from kernels.activation import silu_and_mul  # noqa: E402
from kernels.awq_configs import (  # noqa: E402
    GEMV_LAUNCHES,
    GEMV_MAX_M,
    AWQLaunch,
    awq_launch_for,
)
from kernels.awq_gemm import awq_linear_with, compute_capability  # noqa: E402
from kernels.triton_utils import num_sms  # noqa: E402

SHAPES = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]  # K x N: qkv, o, gate_up, down
GATE_UP_PROJ = SHAPES[2]
GATED_MAX_M = 16  # decode sizes, where a launch saved counts
ROWS = [1, 2, 4, 8, 16, 64, 256, 1024]
DRY_SHAPES, DRY_ROWS = [(128, 256)], [1, 16, 64]
GROUP_SIZE = 128
# Launches tried beside the table's own, per variant.
CANDIDATES = {
    "gemv": [
        AWQLaunch("gemv", block_n=256, block_k=16, num_warps=4, num_stages=1),
        AWQLaunch("gemv", block_n=256, block_k=32, num_warps=4, num_stages=1),
        AWQLaunch("gemv", block_n=256, block_k=32, num_warps=8, num_stages=1),
        AWQLaunch("gemv", block_n=512, block_k=16, num_warps=8, num_stages=1),
        *GEMV_LAUNCHES.values(),
    ],
    "dot": [
        AWQLaunch("dot", block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4),
        AWQLaunch("dot", block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=4),
        AWQLaunch("dot", block_m=128, block_n=256, block_k=64, num_warps=8, num_stages=3),
    ],
    "dequant_matmul": [
        AWQLaunch("dequant_matmul", block_n=256, block_k=32, num_warps=4, num_stages=1)
    ],
}


def awq_tensors(in_features: int, out_features: int, dtype: torch.dtype, device):
    """Random AutoAWQ GEMM tensors: any int32 is a valid packing of eight int4 values."""
    num_groups = in_features // GROUP_SIZE
    shape, packed = (in_features, out_features // 8), (num_groups, out_features // 8)
    qweight = torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, device=device)
    qzeros = torch.randint(-(2**31), 2**31 - 1, packed, dtype=torch.int32, device=device)
    scales = (torch.rand(num_groups, out_features, device=device) * 0.01).to(dtype)
    return qweight, qzeros, scales


def time_us(fn, device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3
    start = time.perf_counter()  # the dry run: once is enough to show it works
    fn()
    return (time.perf_counter() - start) * 1e6


def launches_for(num_rows: int, arch: int | None, dry_run: bool) -> list[AWQLaunch]:
    table = awq_launch_for(arch, num_rows, GROUP_SIZE)
    variants = ["dot"] + (["gemv"] if num_rows <= GEMV_MAX_M else [])
    variants += ["dequant_matmul"] if num_rows >= 64 else []
    per_variant = 1 if dry_run else None
    launches = [table] + [c for v in variants for c in CANDIDATES[v][:per_variant]]
    return list(dict.fromkeys(launches))  # the table's first, no launch twice


def gemlite_importable() -> bool:
    """Whether the peer imports here (it is timed where it does)."""
    try:
        import gemlite.core  # noqa: F401
    except Exception as e:  # not installed, or broken on this machine: ours alone
        print(f"gemlite not timed: {e!r}")
        return False
    return True


def gemlite_linear(qweight, qzeros, scales):
    """gemlite's W4A16 layer for the same weight."""
    from gemlite.core import DType, GemLiteLinearTriton

    shifts = torch.tensor(reference.AWQ_NIBBLE_OF_COLUMN, device=qweight.device) * 4
    q = ((qweight[..., None] >> shifts) & 0xF).reshape(qweight.shape[0], -1)  # [K, N]
    z = ((qzeros[..., None] >> shifts) & 0xF).reshape(qzeros.shape[0], -1)
    in_features, out_features = q.shape
    layer = GemLiteLinearTriton(
        W_nbits=4,
        group_size=GROUP_SIZE,
        in_features=in_features,
        out_features=out_features,
        input_dtype=DType.FP16,
        output_dtype=DType.FP16,
    )
    layer.pack(
        q.t().contiguous().to(torch.uint8),
        scales.t().contiguous().half(),
        z.t().contiguous().half(),
        bias=None,
    )
    return layer


def bench_shape(in_features, out_features, rows, dtype, device, arch) -> list[dict]:
    qweight, qzeros, scales = awq_tensors(in_features, out_features, dtype, device)
    dense = torch.randn(in_features, out_features, device=device, dtype=dtype)
    sms = num_sms(device)
    results = []
    for num_rows in rows:
        x = torch.randn(num_rows, in_features, device=device, dtype=dtype)
        expected = reference.awq_linear(x, qweight, qzeros, scales, GROUP_SIZE).float()
        row = {"K": in_features, "N": out_features, "M": num_rows, "variants": {}}
        row["fp16_us"] = time_us(functools.partial(torch.matmul, x, dense), device)
        for launch in launches_for(num_rows, arch, dry_run=device.type != "cuda"):
            run = functools.partial(
                awq_linear_with, x, qweight, qzeros, scales, GROUP_SIZE, None, launch, sms
            )
            try:
                error = (run().float() - expected).abs().max().item()
            except Exception as e:  # e.g. a candidate's tiles do not fit this GPU: time the rest
                row["variants"][_name(launch)] = {"failed": repr(e)}
                continue
            if error > 2e-2 * expected.abs().max().item():  # wrong: its speed means nothing
                row["variants"][_name(launch)] = {"error": error}
                continue
            row["variants"][_name(launch)] = {"us": time_us(run, device), "launch": launch}
        results.append(row)
    return results


def bench_gemlite(results: list[dict], in_features: int, out_features: int, dtype, device) -> None:
    """gemlite's time added to each row of ``results`` at K x N (same M, a weight drawn
    the same way). Run after all of ours: with no tuned config for a GPU (none ships for
    the H200), its first call per shape autotunes, for as long as it takes."""
    try:
        layer = gemlite_linear(*awq_tensors(in_features, out_features, dtype, device))
    except Exception as e:  # a gemlite API we do not know: say so, keep the rest
        print(f"gemlite failed at {in_features} x {out_features}: {e!r}")
        return
    for row in (r for r in results if (r["K"], r["N"]) == (in_features, out_features)):
        x = torch.randn(row["M"], in_features, device=device, dtype=dtype)
        try:
            row["gemlite_us"] = time_us(functools.partial(layer, x), device)
        except Exception as e:  # as above
            row["gemlite_error"] = repr(e)


def bench_gated(in_features, out_features, rows, dtype, device, arch) -> list[dict]:
    """Per decode M: the table's launch over a gate | up weight with SiLU·mul in its
    epilogue (``gated``), and the same launch followed by the SiLU kernel."""
    weights = (*awq_tensors(in_features, out_features, dtype, device), GROUP_SIZE, None)
    sms = num_sms(device)
    results = []
    for num_rows in (m for m in rows if m <= GATED_MAX_M):
        x = torch.randn(num_rows, in_features, device=device, dtype=dtype)
        launch = awq_launch_for(arch, num_rows, GROUP_SIZE)
        row = {"K": in_features, "N": out_features, "M": num_rows, "launch": _name(launch)}
        linear = functools.partial(awq_linear_with, x, *weights, launch, sms)
        then_silu = functools.partial(_silu_and_mul_of, linear)
        gated = functools.partial(linear, gated=True)
        row["equal"] = torch.equal(then_silu(), gated())  # the same products
        row["then_silu_us"] = time_us(then_silu, device)
        row["gated_us"] = time_us(gated, device)
        results.append(row)
    return results


def _silu_and_mul_of(linear) -> torch.Tensor:
    return silu_and_mul(linear())


def _name(launch: AWQLaunch) -> str:
    return f"{launch.variant} m{launch.block_m} n{launch.block_n} k{launch.block_k} " + (
        f"w{launch.num_warps} s{launch.num_stages}"
    )


def best_per_rows(results: list[dict]) -> dict[int, tuple[str, float]]:
    """For each M: the launch with the least time summed over the shapes, and that time."""
    totals: dict[int, dict[str, float]] = {}
    for row in results:
        for name, measured in row["variants"].items():
            if "us" in measured:
                per_rows = totals.setdefault(row["M"], {})
                per_rows[name] = per_rows.get(name, 0.0) + measured["us"]
    return {m: min(t.items(), key=lambda item: item[1]) for m, t in sorted(totals.items())}


def summary(results: list[dict]) -> dict:
    """Per M: the table's launch and the best launch against fp16 (and gemlite), summed
    over the shapes."""
    best = best_per_rows(results)
    out = {}
    for m, (name, best_us) in best.items():
        rows = [r for r in results if r["M"] == m]
        fp16 = sum(r["fp16_us"] for r in rows)
        table_us = sum(next(iter(r["variants"].values())).get("us", float("nan")) for r in rows)
        out[m] = {
            "best": name,
            "best_launch": next(
                r["variants"][name]["launch"]
                for r in rows
                if "launch" in r["variants"].get(name, {})
            ),
            "best_vs_fp16": fp16 / best_us,
            "table_vs_fp16": fp16 / table_us,
        }
        if all("gemlite_us" in r for r in rows):
            out[m]["best_vs_gemlite"] = sum(r["gemlite_us"] for r in rows) / best_us
    return out


def run(out: Path | None, dtype: torch.dtype) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes, rows = (SHAPES, ROWS) if device.type == "cuda" else (DRY_SHAPES, DRY_ROWS)
    arch = compute_capability(device)
    report = {"device": _device_name(device), "dtype": str(dtype), "rows": []}

    def save() -> None:  # after every stage: a run cut short still reports what it measured
        report["summary"] = summary(report["rows"])
        if out:
            out.write_text(json.dumps(report, indent=1, default=_json))

    torch.manual_seed(0)
    for in_features, out_features in shapes:
        report["rows"] += bench_shape(in_features, out_features, rows, dtype, device, arch)
        save()
    gate_up = GATE_UP_PROJ if device.type == "cuda" else shapes[-1]
    report["gated"] = bench_gated(*gate_up, rows, dtype, device, arch)
    save()
    if device.type == "cuda" and dtype == torch.float16 and gemlite_importable():
        for in_features, out_features in shapes:
            bench_gemlite(report["rows"], in_features, out_features, dtype, device)
            save()
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu (dry run: Triton interpreter, tiny shapes; the numbers mean nothing)"


def _json(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    report = run(args.out, getattr(torch, args.dtype))
    print(report["device"], args.dtype, f"AWQ group size {GROUP_SIZE}")
    print(f"{'K x N':>13} {'M':>5} {'fp16 us':>8} {'best int4 us':>12}  best launch")
    for row in report["rows"]:
        timed = {n: v["us"] for n, v in row["variants"].items() if "us" in v}
        name, us = min(timed.items(), key=lambda item: item[1], default=("none ran", float("nan")))
        print(
            f"{row['K']:>5} x {row['N']:<5} {row['M']:>5} {row['fp16_us']:>8.1f} "
            f"{us:>12.1f}  {name}"
        )
    print("\nper M, summed over the shapes:")
    for m, s in report["summary"].items():
        print(f"  M={m:<5} {s}")
    print("\ngate_up: its launch, then the SiLU kernel, against SiLU·mul in its epilogue:")
    for row in report["gated"]:
        print(
            f"  M={row['M']:<2} {row['launch']}: {row['then_silu_us']:.1f} us -> "
            f"{row['gated_us']:.1f} us, same output: {row['equal']}"
        )


if __name__ == "__main__":
    main()
