"""Record the Triton launches that kernel wrappers make on CPU tensors, and compile each
for a GPU arch exactly as the runtime JIT would (its binder, its specializations), with
ptxas's resource log and the loop's instruction counts. Used by kernel_static.py; works
with Triton 3.4 to 3.7 (the versions the targets run)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import sm_arch_from_capability
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

WEIGHT_KERNELS = ("awq_gemv_kernel", "awq_dot_kernel")
PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass
class Launch:
    kernel: JITFunction
    args: tuple
    kwargs: dict

    def bind(self, arch: int):
        """(target, signature, constexprs, attrs, options) as JITFunction.run computes them."""
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        kwargs = dict(self.kwargs, debug=self.kwargs.get("debug", self.kernel.debug) or False)
        if hasattr(knobs.compilation, "instrumentation_mode"):  # Triton >= 3.5 binds it
            kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        binder = create_function_from_signature(self.kernel.signature, self.kernel.params, backend)
        bound, specialization, options = binder(*self.args, **kwargs)
        if hasattr(self.kernel, "_pack_args"):  # Triton >= 3.5
            packed = self.kernel._pack_args(backend, kwargs, bound, specialization, options)
        else:
            packed = _pack_args_3_4(self.kernel, backend, kwargs, bound, specialization)
        options, signature, constexprs, attrs = packed
        return target, signature, constexprs, attrs, options

    def cache_key(self, arch: int) -> str:
        _, signature, constexprs, attrs, options = self.bind(arch)
        return repr((self.kernel.fn.__name__, signature, constexprs, attrs, options))

    def describe(self) -> str:
        """M and N where the kernel has them, the constexprs and the launch options."""
        bound = dict(zip([p.name for p in self.kernel.params], self.args)) | self.kwargs
        shown = {k: v for k, v in bound.items() if k in ("M", "N") or k.isupper()}
        shown.update((k, v) for k, v in bound.items() if k in ("num_warps", "num_stages"))
        return " ".join(f"{k}={v}" for k, v in shown.items() if not hasattr(v, "data_ptr"))


def _pack_args_3_4(kernel: JITFunction, backend, kwargs: dict, bound, specialization):
    """What Triton 3.4 (the Jetson image's) computes inline in ``JITFunction.run`` where
    later versions call ``_pack_args``: options, signature, constexprs, attrs."""
    from triton.runtime.jit import find_paths_if, get_iterable_path

    options = backend.parse_options(kwargs)
    sigvals = [kind for kind, _ in specialization]
    signature = dict(zip([param.name for param in kernel.params], sigvals))
    constexpr_paths = find_paths_if(sigvals, lambda _, kind: kind == "constexpr")
    values = list(bound.values())
    constexprs = {path: get_iterable_path(values, path) for path in constexpr_paths}
    attrvals = [attr for _, attr in specialization]
    attr_paths = find_paths_if(attrvals, lambda _, attr: isinstance(attr, str))
    attrs = {path: backend.parse_attr(get_iterable_path(attrvals, path)) for path in attr_paths}
    return options, signature, constexprs, attrs


@contextlib.contextmanager
def recorded_launches() -> Iterator[list[Launch]]:
    """Within the block, ``kernel[grid](...)`` records the launch instead of running it."""
    launches: list[Launch] = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs))

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def compile_launch(launch: Launch, arch: int) -> dict:
    target, signature, constexprs, attrs, options = launch.bind(arch)
    source = ASTSource(launch.kernel, signature, constexprs, attrs)
    log = io.StringIO()
    # A cache hit skips ptxas and so its log: compile afresh.
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(source, target=target, options=options.__dict__)
    ptxas_log = log.getvalue()
    if not PTXAS_REGISTERS.search(ptxas_log):  # Triton 3.4 drops ptxas's log: ask it again
        ptxas_log = _ptxas_log(compiled.asm["ptx"], arch)
    registers = PTXAS_REGISTERS.search(ptxas_log)
    spills = PTXAS_SPILLS.search(ptxas_log)
    assert registers and spills, ptxas_log
    name = launch.kernel.fn.__name__
    result = {
        "arch": f"sm_{arch}",
        "kernel": name,
        "launch": launch.describe(),
        "registers": int(registers.group(1)),
        "spill_bytes": sum(map(int, spills.groups())),
        "shared_bytes": compiled.metadata.shared,
    }
    if name in WEIGHT_KERNELS:
        bound = dict(zip([p.name for p in launch.kernel.params], launch.args)) | launch.kwargs
        # The GEMV's loop body is a whole group (its K tiles unrolled), the GEMM's a K tile.
        rows_per_iteration = bound["GROUP_SIZE" if name == "awq_gemv_kernel" else "BLOCK_K"]
        weights_per_thread = rows_per_iteration * bound["BLOCK_N"] / (32 * bound["num_warps"])
        ptx_loop = _loop_length(compiled.asm["ptx"].splitlines(), _ptx_label, _ptx_branch)
        sass_loop = _loop_length(_sass(compiled.asm["cubin"], arch), _sass_label, _sass_branch)
        result["ptx_per_weight"] = ptx_loop / weights_per_thread
        result["sass_per_weight"] = sass_loop / weights_per_thread if sass_loop else None
    return result


def _loop_length(lines: list[str], label_of, branch_target) -> int:
    """Instructions in the longest loop body (a label and a later branch back to it)."""
    labels: dict[str, int] = {}
    count = 0
    longest = 0
    for line in lines:
        label = label_of(line)
        if label:
            labels[label] = count
            continue
        if not _is_instruction(line):
            continue
        count += 1
        target = branch_target(line)
        if target in labels:
            longest = max(longest, count - labels[target])
    return longest


def _is_instruction(line: str) -> bool:
    text = line.strip()
    return bool(text) and text.endswith(";") and not text.startswith((".", "//", "{", "}"))


def _ptx_label(line: str) -> str | None:
    match = re.match(r"^\s*(\$L__\w+):", line)
    return match.group(1) if match else None


def _ptx_branch(line: str) -> str | None:
    match = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
    return match.group(1) if match else None


def _sass_label(line: str) -> str | None:
    match = re.match(r"^\s*\.(L_x_\d+):", line)
    return match.group(1) if match else None


def _sass_branch(line: str) -> str | None:
    match = re.search(r"\bBRA\b[^;]*`\(\.(L_x_\d+)\)", line)
    return match.group(1) if match else None


def _ptxas_log(ptx: str, arch: int) -> str:
    """ptxas's resource usage of ``ptx`` for sm_``arch`` (the ptxas that ships with Triton)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        command = [knobs.nvidia.ptxas.path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}"]
        done = subprocess.run(
            [*command, str(path), "-o", str(Path(tmp) / "kernel.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    return done.stderr + done.stdout


def _sass(cubin: bytes, arch: int) -> list[str]:
    """The cubin's SASS, one instruction a line (nvdisasm ships with Triton)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run(
            [knobs.nvidia.nvdisasm.path, "-c", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return text.splitlines()
