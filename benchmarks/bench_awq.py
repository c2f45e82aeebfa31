"""AWQ vs round-to-nearest int4 on a real model: held-out perplexity, quantize wall time
and peak memory.

The model is SmolLM2-135M-Instruct (tests/real_model.py; its weights come from a Q4_1
GGUF, dequantized). Calibration and held-out text are two disjoint halves of the Python
reference docs that ship with the interpreter (tests.real_model.python_docs). Each
quantization runs in a fresh process, for its peak RSS; every checkpoint is scored by
an independent dequantizer in transformers (tests/quant/independent.py).

    .venv/bin/python -m benchmarks.bench_awq [--num-samples 32] [--group-size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from engine.quant.calib import calibration_ids
from engine.quant.perplexity import windows
from engine.tokenizer import load_tokenizer
from tests.quant.independent import load_dequantized, perplexity
from tests.real_model import python_docs, real_model_dir

# Peak RSS is VmHWM, which exec resets: ru_maxrss would count the parent's pages that a
# forked child holds before it execs.
MEASURE = """
import json, sys, time
import torch
from engine.quant.quantizer import QuantizeConfig, quantize

def status(key):
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024

model_dir, out_dir, method, ids_path, group_size = sys.argv[1:]
ids = torch.load(ids_path)
config = QuantizeConfig(method=method, group_size=int(group_size), num_samples=ids.shape[0],
                        seq_len=ids.shape[1], device="cpu")
start = time.perf_counter()
quantize(model_dir, out_dir, config, calib_ids=ids)
print(json.dumps({"seconds": time.perf_counter() - start, "peak": status("VmHWM")}))
"""


def quantize_in_subprocess(
    model_dir: Path, out_dir: Path, method: str, ids_path: Path, group_size: int
) -> dict:
    argv = [str(model_dir), str(out_dir), method, str(ids_path), str(group_size)]
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv], stdout=subprocess.PIPE, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=512)
    # SmolLM2-135M's hidden size, 576, is not a multiple of 128 (AutoAWQ refuses g128 too).
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--held-out-tokens", type=int, default=8192)
    args = parser.parse_args()
    model_dir = real_model_dir()
    tokenizer = load_tokenizer(model_dir)
    calib = calibration_ids(tokenizer, [python_docs("calibration")], args.num_samples, args.seq_len)
    held_out = torch.tensor(
        windows(tokenizer(python_docs("held-out")).input_ids, args.seq_len, args.held_out_tokens)
    )
    rows = [("16-bit (fp32)", perplexity(load_dequantized(model_dir), held_out), None)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(calib, tmp / "calib.pt")
        for method in ("rtn", "awq"):
            out = tmp / method
            stats = quantize_in_subprocess(
                model_dir, out, method, tmp / "calib.pt", args.group_size
            )
            rows.append((f"{method} int4", perplexity(load_dequantized(out), held_out), stats))

    print(
        f"\nmodel: SmolLM2-135M-Instruct (30 layers, hidden 576, GQA 9/3); int4 group size "
        f"{args.group_size}; calibration {args.num_samples} x {args.seq_len} tokens; held-out "
        f"{held_out.numel()} tokens in windows of {args.seq_len}; CPU\n"
    )
    print("| weights | held-out perplexity | vs 16-bit | quantize wall s | peak RSS GiB |")
    print("|---|---|---|---|---|")
    reference = rows[0][1]
    for name, ppl, stats in rows:
        if stats is None:
            print(f"| {name} | {ppl:.4f} | - | - | - |")
            continue
        print(
            f"| {name} | {ppl:.4f} | {100 * (ppl / reference - 1):+.2f}% "
            f"| {stats['seconds']:.0f} | {stats['peak'] / (1 << 30):.2f} |"
        )


if __name__ == "__main__":
    main()
