"""The native CPU kernels (kernels/cpu_quant_gemm.c) alone, on Qwen2-0.5B's linears: one
decode step's worth of each projection and the int8 LM head, for 1 to 8 activation rows,
as each code path this CPU can run compiles them (``--arch``: -march values to build
beside the native one, e.g. ``alderlake`` for AVX2 with VNNI on an AVX-512 machine).

Each figure is the best of ``--repeats`` timings of ``--calls`` calls (wall clock, so a
quiet machine is needed); the weights are random, their bytes streamed from memory
(the whole step's weights do not fit the caches). GB/s is the weight bytes read per
second; GMAC/s the multiply-adds per second, for comparing code paths, not machines.

    .venv/bin/python benchmarks/bench_cpu_kernels.py [--threads 2] [--arch alderlake haswell]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernels import cpu_linear, cpu_native  # noqa: E402

HIDDEN, INTERMEDIATE, VOCAB, LAYERS = 896, 4864, 151936, 24
# (name, out-features, in-features) of one decoder layer's linears (q/k/v and gate/up
# fused, as the engine runs them), then the head
INT4_LINEARS = (
    ("qkv", HIDDEN + 2 * 128, HIDDEN),
    ("o", HIDDEN, HIDDEN),
    ("gate_up", 2 * INTERMEDIATE, HIDDEN),
    ("down", HIDDEN, INTERMEDIATE),
)
GROUP_SIZE = 128


def int4_layer(out_features: int, in_features: int):
    codes = torch.randint(0, 16, (out_features, in_features), dtype=torch.uint8)
    groups = in_features // GROUP_SIZE
    zeros = torch.randint(0, 16, (groups, out_features))
    scales = torch.rand(groups, out_features) * 0.01 + 0.001
    return cpu_linear.pack_int4_native(codes, zeros, scales, GROUP_SIZE)


def best_seconds(run, calls: int, repeats: int) -> float:
    run()  # the first call faults the pages in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def measure(kernels: cpu_native.NativeKernels, rows: int, args) -> list[tuple[str, float, int]]:
    """(name, seconds a call, weight bytes) for each of one step's linears"""
    results = []
    for name, out_features, in_features in INT4_LINEARS:
        # a layer's copies of this linear, so that one step streams them from memory
        copies = [int4_layer(out_features, in_features) for _ in range(args.layers)]
        x = torch.randn(rows, in_features)
        block = cpu_linear.activation_block(GROUP_SIZE)

        def run(copies=copies, x=x, out_features=out_features, block=block):
            for weight, scales, offsets in copies:
                kernels.int4_linear(x, weight, scales, offsets, GROUP_SIZE, block, out_features)

        seconds = best_seconds(run, args.calls, args.repeats)
        results.append(
            (f"int4 {name} x{args.layers}", seconds, out_features * in_features // 2 * args.layers)
        )
    codes = torch.randint(-127, 128, (VOCAB, HIDDEN), dtype=torch.int8)
    head = cpu_linear.tile_int8_rows(codes)
    scales = torch.rand(VOCAB) * 0.01
    x = torch.randn(rows, HIDDEN)
    block = cpu_linear.activation_block(HIDDEN)
    seconds = best_seconds(
        lambda: kernels.int8_linear(x, head, scales, block), args.calls, args.repeats
    )
    results.append(("int8 head", seconds, VOCAB * HIDDEN))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--arch", nargs="*", default=[], help="-march values to compare")
    parser.add_argument("--layers", type=int, default=LAYERS, help="copies of each linear")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as cache:
        builds = [cpu_native.load(Path(cache))]
        builds += [cpu_native.load(Path(cache), f"-march={arch}") for arch in args.arch]
        print(f"threads {args.threads}; ms a call (GB/s of weights, GMAC/s)")
        for kernels in builds:
            for rows in args.rows:
                for name, seconds, size in measure(kernels, rows, args):
                    macs = size * (2 if name.startswith("int4") else 1) * rows
                    print(
                        f"{kernels.simd:12} M={rows} {name:18} {seconds * 1e3:8.2f} ms "
                        f"({size / seconds / 1e9:5.1f} GB/s, {macs / seconds / 1e9:6.1f} GMAC/s)"
                    )


if __name__ == "__main__":
    main()
