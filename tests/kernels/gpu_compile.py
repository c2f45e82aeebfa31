"""Compile every Triton kernel for NVIDIA GPUs without one: run the real wrappers on CPU
tensors, but let each launch compile its kernel (to a cubin, for sm_87 = Jetson Orin and
sm_90 = H100) instead of running it. The interpreter accepts code the GPU compiler
rejects; this catches that, with the exact argument types and launch options the
wrappers produce. Needs TRITON_INTERPRET unset: ``python -m tests.kernels.gpu_compile``.
"""

from __future__ import annotations

import inspect

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

TYPE_NAMES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}
ARCHS = (87, 90)


def _compile_launch(kernel: JITFunction, *args, num_warps=4, num_stages=3, **kwargs) -> None:
    bound = inspect.signature(kernel.fn).bind(*args, **kwargs).arguments
    signature, constexprs = {}, {}
    for param in kernel.params:
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = f"*{TYPE_NAMES[value.dtype]}"
        else:
            signature[param.name] = "fp32" if isinstance(value, float) else "i32"
    for arch in ARCHS:
        options = {"num_warps": num_warps, "num_stages": num_stages}
        source = ASTSource(kernel, signature, constexprs)
        triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    print(f"compiled {kernel.fn.__name__} for sm_{'/sm_'.join(map(str, ARCHS))}")


def main() -> None:
    JITFunction.__getitem__ = lambda kernel, grid: (
        lambda *args, **kwargs: _compile_launch(kernel, *args, **kwargs)
    )
    from kernels import triton_ops

    for dtype in (torch.float16, torch.bfloat16):
        for num_rows in (1, 100):  # the split-K GEMV and the GEMM
            x = torch.zeros(num_rows, 256, dtype=dtype)
            qweight = torch.zeros(256, 32, dtype=torch.int32)
            qzeros = torch.zeros(2, 32, dtype=torch.int32)
            scales = torch.zeros(2, 256, dtype=dtype)
            bias = torch.zeros(256, dtype=dtype)
            triton_ops.awq_linear(x, qweight, qzeros, scales, 128, bias)
        k_cache = torch.zeros(4, 16, 2, 128, dtype=dtype)
        block_tables = torch.zeros(2, 4, dtype=torch.int32)
        seq_lens = torch.zeros(2, dtype=torch.int32)
        for num_tokens in (2, 5):  # decode, then prefill
            query = torch.zeros(num_tokens, 8, 128, dtype=dtype)
            starts = torch.tensor([0, 1, num_tokens], dtype=torch.int32)
            triton_ops.paged_attention(query, k_cache, k_cache, block_tables, seq_lens, starts, 0.1)
        key = torch.zeros(3, 2, 128, dtype=dtype)
        slots = torch.zeros(3, dtype=torch.int64)
        triton_ops.write_kv_cache(key, key, k_cache, k_cache, slots)
        hidden = torch.zeros(3, 4096, dtype=dtype)
        weight = torch.zeros(4096, dtype=dtype)
        triton_ops.rms_norm(hidden, weight, 1e-5)
        triton_ops.add_rms_norm(hidden, hidden, weight, 1e-5)
        cos = torch.zeros(8, 64)
        triton_ops.rotary_embedding(torch.zeros(3, dtype=torch.int64), query[:3], key, cos, cos)
        triton_ops.silu_and_mul(hidden)


if __name__ == "__main__":
    main()
