"""The W4A16 AWQ kernel against fp16 ``torch.matmul`` (cuBLAS) on Llama-3-8B's layer shapes.

Goals: at least 3x fp16's speed at M = 1 (decode reads a quarter of the bytes), and within
1.2x of fp16 at M = 1024 (prefill is compute-bound; dequantizing must hide under the MMA).
GPU only. Times are medians of ``triton.testing.do_bench``, which flushes the L2 cache
between runs, so every call streams its weight from DRAM as decode does.

    .venv/bin/python benchmarks/bench_kernels.py [--group-size 128] [--dtype float16]
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch

SHAPES = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]  # K x N: qkv, o, gate_up, down
ROWS = [1, 4, 16, 128, 1024]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def awq_tensors(in_features: int, out_features: int, group_size: int, dtype: torch.dtype):
    """Random AutoAWQ GEMM tensors: any int32 is a valid packing of eight int4 values."""
    num_groups = in_features // group_size
    qweight = torch.randint(
        -(2**31), 2**31 - 1, (in_features, out_features // 8), dtype=torch.int32
    )
    qzeros = torch.randint(-(2**31), 2**31 - 1, (num_groups, out_features // 8), dtype=torch.int32)
    scales = torch.rand(num_groups, out_features) * 0.01
    return qweight.cuda(), qzeros.cuda(), scales.to("cuda", dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128])
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels.py measures GPU kernels and needs CUDA; no CUDA device found.")
    import triton.testing

    import kernels
    from kernels import reference

    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, AWQ group size {args.group_size}")
    print(f"{'K x N':>12} {'M':>5} {'fp16 us':>9} {'int4 us':>9} {'speedup':>8} {'int4 GB/s':>10}")
    worst = {1: float("inf"), 1024: float("inf")}
    for in_features, out_features in SHAPES:
        qweight, qzeros, scales = awq_tensors(in_features, out_features, args.group_size, dtype)
        dense = torch.randn(in_features, out_features, device="cuda", dtype=dtype)
        weight_bytes = qweight.nbytes + qzeros.nbytes + scales.nbytes
        for num_rows in ROWS:
            x = torch.randn(num_rows, in_features, device="cuda", dtype=dtype)
            int4_args = (x, qweight, qzeros, scales, args.group_size)
            if num_rows == 4:  # the kernel must be right before its speed means anything
                expected = reference.awq_linear(*int4_args).float()
                error = (kernels.awq_linear(*int4_args).float() - expected).abs().max()
                if error > 2e-2 * expected.abs().max():
                    sys.exit(f"awq_linear is wrong at {in_features} x {out_features}: {error}")
            fp16 = functools.partial(torch.matmul, x, dense)
            int4 = functools.partial(kernels.awq_linear, *int4_args)
            fp16_ms = triton.testing.do_bench(fp16, return_mode="median")
            int4_ms = triton.testing.do_bench(int4, return_mode="median")
            speedup = fp16_ms / int4_ms
            if num_rows in worst:
                worst[num_rows] = min(worst[num_rows], speedup)
            print(
                f"{in_features:>5} x {out_features:<5} {num_rows:>5} {fp16_ms * 1e3:>9.1f} "
                f"{int4_ms * 1e3:>9.1f} {speedup:>7.2f}x {weight_bytes / int4_ms / 1e6:>10.0f}"
            )
    print(f"\nworst speedup at M=1: {worst[1]:.2f}x (goal >= 3x)")
    print(f"worst speedup at M=1024: {worst[1024]:.2f}x (goal >= {1 / 1.2:.2f}x, i.e. within 1.2x)")


if __name__ == "__main__":
    main()
