"""The one command to run when a GPU is lent: ``make gpu-check OUT=DIR [WHEELS=DIR]``.

On a bare CUDA machine (its own torch and triton, no network, no venv; ``PYTHONPATH=.``)
it runs, in order and each within its time box, so that the whole stays under 8 minutes
on an H100/H200 including Triton compilation:

1. tests: tests/kernels on the GPU, and every CUDA test elsewhere (CUDA graphs, engine
   greedy on CUDA = on CPU, AWQ loading on CUDA);
2. kernels: benchmarks/bench_kernels.py (every W4A16 variant vs fp16 matmul, gemlite
   too when importable, Llama-3-8B shapes, M = 1 ... 1024);
3. decode: benchmarks/bench_decode.py (Llama-3-8B and Llama-3.2-3B shapes built on the
   GPU, int4 vs fp16, batch 1 and 8, fraction of the copy bandwidth measured in the same
   run; CUDA graph capture time and memory at max_num_seqs 64);

while benchmarks/kernel_static.py (CPU only) compiles the static report beside them.
After every step DIR/gpu-check.json (keys device, tests, kernels, decode, static, steps)
and DIR/gpu-check.md (the same as tables) are rewritten: a run cut short still reports
what it did. A step past its box is stopped as by Ctrl-C (its pytest still writes what
ran), and the benchmarks save after every measurement. Each step's output is in DIR/<step>.log.

``WHEELS=DIR`` installs every wheel in DIR (``pip --no-index --no-deps``) into a
temporary folder first, for what the engine and the tests import and the machine lacks:
``make gpu-wheels WHEELS=DIR`` fetches them (benchmarks/gpu_wheels.py; on the lent
machine's image, ``import engine`` fails without llguidance, av, pydantic, ...).

Without CUDA it is a dry run of the same steps on tiny shapes (Triton's interpreter and
the torch twins), in about 2 minutes on 2 idle cores; tests/kernels/test_gpu_check.py runs it
in CI so it never rots.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out DIR [--wheels DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from gpu_check_report import markdown

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
GPU_BUDGET_S = {"tests": 120, "kernels": 180, "decode": 150, "static": 450}
# On 2 busy cores the static report's compiles alone take minutes: it gets the most.
DRY_BUDGET_S = {"tests": 90, "kernels": 90, "decode": 90, "static": 420}
# Outside tests/kernels, the tests that need a GPU say so in their names or ids.
CUDA_TESTS = "cuda or graphs or gpu"


def device_info(cuda: bool) -> dict:
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "cuda": cuda}
    if not cuda:
        return info | {"name": "no CUDA device: dry run on tiny shapes (numbers mean nothing)"}
    props = torch.cuda.get_device_properties(0)
    return info | {
        "name": props.name,
        "capability": f"sm_{props.major}{props.minor}",
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch_cuda": torch.version.cuda,
    }


def test_commands(out: Path, cuda: bool) -> list[list[str]]:
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
    if not cuda:  # the dry run: the step's machinery, on the fastest kernel test file
        return [
            pytest
            + ["--junitxml", str(out / "tests-kernels.xml"), "tests/kernels/test_dispatch.py"]
        ]
    # Most of the step is Triton compiling each test's kernels, one core each: spread it
    # over the machine's cores when pytest-xdist is there (the lent H200's image has it).
    if importlib.util.find_spec("xdist"):
        pytest += ["-n", str(min(8, os.cpu_count() or 1))]
    pytest += ["--timeout", "90"]  # a hung kernel costs one test, not the step
    return [
        # The native CPU kernels' tests (test_cpu_*) are CI's: nothing in them runs on a GPU.
        pytest
        + ["--junitxml", str(out / "tests-kernels.xml"), "tests/kernels"]
        + ["--ignore-glob", "tests/kernels/test_cpu_*.py"],
        pytest
        + ["--junitxml", str(out / "tests-cuda.xml"), "tests", "--ignore=tests/kernels"]
        + ["-k", CUDA_TESTS, "--continue-on-collection-errors"],
    ]


def junit_counts(paths: list[Path]) -> dict:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "interrupted": 0, "failures": []}
    for path in paths:
        if not path.exists():
            continue
        for case in ET.parse(path).getroot().iter("testcase"):
            if case.get("name") is None:  # running when the step's time ran out (stop())
                counts["interrupted"] += 1
                continue
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                counts["failed"] += 1
                counts["failures"].append(name)
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    return counts


def stop(process: subprocess.Popen, grace_s: float = 20) -> None:
    """End a step's command as Ctrl-C would, so that pytest still writes the junit XML of
    the tests that ran (a kill leaves none); kill it if it does not end within grace_s."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_step(name: str, commands: list[list[str]], budget_s: float, env: dict, out: Path) -> dict:
    """Run the commands one after another within the budget; output to DIR/<name>.log."""
    start = time.perf_counter()
    status, timed_out = "ok", f"timed out after {budget_s:.0f} s"
    with open(out / f"{name}.log", "w") as log:
        for command in commands:
            left = budget_s - (time.perf_counter() - start)
            if left <= 0:  # the commands before took the step's time
                status = timed_out
                break
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                returncode = process.wait(timeout=left)
            except subprocess.TimeoutExpired:
                stop(process)
                status = timed_out
                break
            if returncode:
                status = f"exit {returncode}"
    return {"status": status, "seconds": round(time.perf_counter() - start, 1)}


def step_env(out: Path, wheels: Path | None, cuda: bool) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT)]
    if wheels:
        # Not under DIR: thousands of files, and DIR is what comes back from the machine.
        target = Path(tempfile.mkdtemp(prefix="edgechat-pydeps-"))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet"]
            + ["--target", str(target), *map(str, sorted(wheels.glob("*.whl")))],
            check=True,
        )
        paths.append(str(target))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    if not cuda:
        env["TRITON_INTERPRET"] = "1"
    return env


def static_command(out: Path, cuda: bool) -> list[str]:
    command = [
        sys.executable,
        str(BENCH / "kernel_static.py"),
        "--out",
        str(out / "kernel-static.json"),
    ]
    if not cuda:  # the dry run: one model, fp16, M = 1, 16, 64 (CI's spill check too)
        return command + ["--quick", "--models", "Llama-3.2-3B"]
    # fp16 only: both dtypes take twice the ~8 minutes of one on a 2-core machine.
    return command + ["--dtypes", "float16"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wheels", type=Path, help="a folder of wheels to install first")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    budgets = GPU_BUDGET_S if cuda else DRY_BUDGET_S
    report = {"device": device_info(cuda), "tests": None, "kernels": None, "decode": None}
    report |= {"static": None, "steps": {}}
    started = time.perf_counter()

    def save() -> None:
        report["total_s"] = round(time.perf_counter() - started, 1)
        (out / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu-check.md").write_text(markdown(report))

    save()
    env = step_env(out, args.wheels, cuda)
    # The static report compiles on the CPU while the GPU steps run.
    static_env = {k: v for k, v in env.items() if k != "TRITON_INTERPRET"}
    with open(out / "static.log", "w") as static_log:
        static = subprocess.Popen(
            static_command(out, cuda),
            cwd=ROOT,
            env=static_env,
            stdout=static_log,
            stderr=subprocess.STDOUT,
        )
        steps = {
            "tests": test_commands(out, cuda),
            "kernels": [
                [
                    sys.executable,
                    str(BENCH / "bench_kernels.py"),
                    "--out",
                    str(out / "kernels.json"),
                ]
            ],
            "decode": [
                [sys.executable, str(BENCH / "bench_decode.py"), "--out", str(out / "decode.json")]
            ],
        }
        for name, commands in steps.items():
            report["steps"][name] = run_step(name, commands, budgets[name], env, out)
            if name == "tests":
                report["tests"] = junit_counts(sorted(out.glob("tests-*.xml")))
            elif (out / f"{name}.json").exists():
                report[name] = json.loads((out / f"{name}.json").read_text())
            save()
        left = max(1.0, budgets["static"] - (time.perf_counter() - started))
        try:
            static.wait(timeout=left)
            status = "ok" if static.returncode == 0 else f"exit {static.returncode}"
        except subprocess.TimeoutExpired:
            static.kill()
            status = "timed out"
    report["steps"]["static"] = {"status": status}
    if (out / "kernel-static.json").exists():
        report["static"] = json.loads((out / "kernel-static.json").read_text())
    save()
    print((out / "gpu-check.md").read_text())


if __name__ == "__main__":
    main()
