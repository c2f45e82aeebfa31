"""CPU decode speed on Qwen2-0.5B's shapes: our fp32, bf16, int8 and int4 against llama.cpp
on the same weights, in the same run.

The model is random (24 layers, hidden 896, intermediate 4864, 14 query / 2 KV heads,
vocab 151936, tied embeddings, q/k/v biases), rounded to int4 (RTN, group 128) into an
AutoAWQ GEMM checkpoint. The int4 row serves that checkpoint (``--quantization int4``:
the native int4 kernel for the decoder's linears, an int8 head and embedding, all with
int8 activations; the int4-torch row runs torch's bf16 kernels instead, with
``EDGECHAT_NATIVE_CPU_KERNELS=0``); fp32, bf16
and int8 (``--quantization int8``) serve a dense fp32 copy holding exactly its
dequantized weights; llama.cpp runs a GGUF of that copy (linears Q4_0 or Q8_0, the tied
embedding Q8_0, like our int8 head) through llama-cpp-python, installed in an environment
of its own (``--llama-python``; see benchmarks/llama_cpp_decode.py).

Each row runs in a fresh process (its peak RSS is its own) and the rows take turns over
``--repeats`` rounds; the best round is reported. Single stream: one greedy request's
decode tokens/s after its first token. Concurrent: ``--concurrency`` requests at once,
their tokens/s from when all have their first token. The weights are random: the
numbers measure speed, never quality.

    .venv/bin/python benchmarks/bench_cpu.py --work-dir /tmp/bench-cpu \
        --llama-python /work/bench-venv/bin/python \
        [--modes fp32 bf16 int8 int4 int4-torch llama.cpp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN2_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
# A few seconds on a 2-core machine: for checking that the script works, not for numbers.
TINY = dict(
    QWEN2_05B,
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
)
GROUP_SIZE = 128
ENGINE_MODES = {  # mode -> (checkpoint, dtype, quantization, native CPU kernels)
    "fp32": ("dense", "float32", "none", True),
    "bf16": ("dense", "bfloat16", "none", True),
    "int8": ("dense", "auto", "int8", True),
    "int4": ("awq", "auto", "int4", True),
    "int4-torch": ("awq", "auto", "int4", False),  # torch's bf16 int4/int8 kernels instead
}
MODES = [*ENGINE_MODES, "llama.cpp"]


def prompts(num: int, length: int, vocab_size: int) -> list[list[int]]:
    """Distinct prompts (no shared prefix to cache) of ids every vocabulary has."""
    return [
        [(7919 * i + 104729 * j) % (vocab_size - 300) + 256 for j in range(length)]
        for i in range(num)
    ]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# -- the checkpoints ----------------------------------------------------------------------


def write_checkpoints(work_dir: Path, shape: dict, gguf_type: str) -> dict[str, Path]:
    """``{"awq": ..., "dense": ..., "gguf": ...}``, written once into ``work_dir``."""
    from benchmarks.cpu_checkpoints import write_awq_and_dense, write_gguf

    paths = {"awq": work_dir / "awq", "dense": work_dir / "dense", "gguf": work_dir / "model.gguf"}
    if not paths["awq"].exists():
        write_awq_and_dense(work_dir / "source", paths["awq"], paths["dense"], shape, GROUP_SIZE)
    if not paths["gguf"].exists():
        write_gguf(paths["dense"], paths["gguf"], gguf_type)
    return paths


# -- one row, in its own process -----------------------------------------------------------


def run_engine(args: argparse.Namespace) -> dict:
    """Our engine on one mode: load, then single stream and concurrent decode."""
    from engine import LLM, SamplingParams

    _, dtype, quantization, _ = ENGINE_MODES[args.mode]
    before = peak_rss_bytes()
    start = time.perf_counter()
    llm = LLM(
        str(args.model),
        dtype=dtype,
        quantization=quantization,
        threads=args.threads,
        kv_cache_memory=0.25,
        max_model_len=args.prompt_len + args.new_tokens + 16,
        max_num_seqs=max(args.concurrency, 1),
    )
    load_s = time.perf_counter() - start
    model = llm.engine.core.runner.model
    named = (*model.named_parameters(), *model.named_buffers())
    # the weights, each once (tied), without the rotary's cos/sin tables
    weights = {t.data_ptr(): t for name, t in named if ".rotary." not in name}
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    batch = json.loads(args.prompts.read_text())[: args.concurrency]
    single = decode_tokens_per_s(llm.engine, batch[:1], params)
    concurrent = decode_tokens_per_s(llm.engine, batch, params)
    return {
        "single": single,
        "concurrent": concurrent,
        "load_s": load_s,
        "dtype": str(llm.engine.dtype).removeprefix("torch."),
        "weight_bytes": sum(t.nbytes for t in weights.values()),
        "rss_before_load": before,
        "peak_rss": peak_rss_bytes(),
    }


def decode_tokens_per_s(engine, batch: list[list[int]], params) -> float:
    """Tokens/s of the steps after every request has its first token."""
    for i, prompt in enumerate(batch):
        engine.add_request(f"bench-{len(batch)}-{i}", prompt, params)
    started: set[str] = set()
    num_tokens, start = 0, None
    while engine.has_unfinished:
        outputs = engine.step()
        if start is not None:
            num_tokens += sum(len(o.new_token_ids) for o in outputs)
        started.update(o.request_id for o in outputs)
        if start is None and len(started) == len(batch):
            start = time.perf_counter()
    return num_tokens / (time.perf_counter() - start)


def run_row(mode: str, paths: dict[str, Path], args: argparse.Namespace) -> dict:
    common = [
        f"--prompts={paths['prompts']}",
        f"--threads={args.threads}",
        f"--new-tokens={args.new_tokens}",
        f"--concurrency={args.concurrency}",
    ]
    if mode == "llama.cpp":
        command = [
            args.llama_python,
            str(ROOT / "benchmarks/llama_cpp_decode.py"),
            f"--model={paths['gguf']}",
            *common,
        ]
    else:
        command = [
            sys.executable,
            __file__,
            "--worker",
            f"--mode={mode}",
            f"--model={paths[ENGINE_MODES[mode][0]]}",
            f"--prompt-len={args.prompt_len}",
            *common,
        ]
    from engine.layers.cpu_quant import NATIVE_KERNELS_ENV

    env = dict(os.environ)
    if mode in ENGINE_MODES and not ENGINE_MODES[mode][3]:
        env[NATIVE_KERNELS_ENV] = "0"
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the whole run -------------------------------------------------------------------------


def machine() -> str:
    model_name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model_name}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, help="checkpoints go (and are kept) here")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument("--llama-python", help="a Python with llama-cpp-python installed")
    parser.add_argument("--gguf-type", choices=["Q4_0", "Q8_0"], default="Q4_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a tiny model (a check, no numbers)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    # One row in this process (run_row starts these).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=list(ENGINE_MODES), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_engine(args)))
        return
    if "llama.cpp" in args.modes and not args.llama_python:
        parser.error("llama.cpp needs --llama-python (or leave it out of --modes)")
    if args.work_dir is None:
        parser.error("--work-dir is required")
    args.shape = TINY if args.tiny else QWEN2_05B
    args.work_dir.mkdir(parents=True, exist_ok=True)
    paths = write_checkpoints(args.work_dir, args.shape, args.gguf_type)
    paths["prompts"] = args.work_dir / "prompts.json"
    batch = prompts(args.concurrency, args.prompt_len, args.shape["vocab_size"])
    paths["prompts"].write_text(json.dumps(batch))
    report = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rounds": [],
    }
    for round_index in range(args.repeats):
        # alternate the order, so no mode always runs just after the same neighbour
        order = args.modes if round_index % 2 == 0 else args.modes[::-1]
        rows = {}
        for mode in order:
            rows[mode] = {**run_row(mode, paths, args), "load_average": os.getloadavg()[0]}
            print(mode, rows[mode], flush=True)
        report["rounds"].append(rows)
        if args.out:
            args.out.write_text(json.dumps(report, indent=1))
    print_table(report, args)


def print_table(report: dict, args: argparse.Namespace) -> None:
    print(
        f"\n{report['machine']}; {args.threads} threads, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, best of {args.repeats}"
    )
    print(
        f"{'mode':>10} {'single tok/s':>12} {f'{args.concurrency} conc tok/s':>15} "
        f"{'weights MiB':>11} {'peak RSS MiB':>12} {'RSS before load':>15}"
    )
    for mode in args.modes:
        runs = [r[mode] for r in report["rounds"] if "error" not in r[mode]]
        if not runs:
            print(f"{mode:>10} failed: {report['rounds'][0][mode]['error']}")
            continue
        single = max(r["single"] for r in runs)
        concurrent = max(r["concurrent"] for r in runs)
        weights = runs[0].get("weight_bytes", 0) / 2**20
        rss = min(r["peak_rss"] for r in runs) / 2**20
        before = min(r.get("rss_before_load", 0) for r in runs) / 2**20
        print(
            f"{mode:>10} {single:>12.2f} {concurrent:>15.2f} {weights:>11.0f} {rss:>12.0f} "
            f"{before:>15.0f}"
        )


if __name__ == "__main__":
    main()
