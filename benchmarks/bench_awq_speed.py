"""How long AWQ takes on a Qwen2.5-0.5B-shaped model: wall time per decoder layer (split
into recording the layer's inputs and the search) and in all, peak RSS, load average.

The model is random (benchmarks/bench_cpu.py's QWEN2_05B: 24 layers, hidden 896,
intermediate 4864, GQA 14/2, q/k/v biases, tied embeddings, vocab 151936), written once
into --work-dir; calibration ids are random too: this measures time, not accuracy (for
that, benchmarks/bench_awq.py). The quantization runs in a fresh process, for its peak RSS,
and prints each layer as it finishes, so a run stopped early still tells the time a layer.

    .venv/bin/python -m benchmarks.bench_awq_speed [--num-samples 128] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_cpu import QWEN2_05B, TINY
from benchmarks.cpu_checkpoints import _write_random_qwen2

# Each layer's two phases timed by wrapping the quantizer's calls to them; peak RSS is
# VmHWM, which exec resets (ru_maxrss would count pages a forked child shares).
MEASURE = """
import json, sys, time
import torch
from engine.quant import quantizer

def timed(phase, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        print(json.dumps({phase: time.perf_counter() - start}), flush=True)
        return result
    return wrapper

def status(key):
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024

model_dir, out_dir, ids_path, device = sys.argv[1:]
quantizer.record_inputs = timed("record", quantizer.record_inputs)
quantizer.awq_layer = timed("search", quantizer.awq_layer)
ids = torch.load(ids_path)
config = quantizer.QuantizeConfig(num_samples=ids.shape[0], seq_len=ids.shape[1], device=device)
start = time.perf_counter()
quantizer.quantize(model_dir, out_dir, config, calib_ids=ids)
print(json.dumps({"seconds": time.perf_counter() - start, "peak": status("VmHWM")}), flush=True)
"""


def run(model_dir: Path, ids_path: Path, out_dir: Path, device: str) -> dict:
    argv = [sys.executable, "-c", MEASURE, str(model_dir), str(out_dir), str(ids_path), device]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    layers, current = [], {}
    for line in child.stdout:
        record = json.loads(line)
        current.update(record)
        if "search" in record:
            layers.append({**current, "load": os.getloadavg()[0]})
            print(
                f"layer {len(layers) - 1}: record {current['record']:.1f} s, search "
                f"{current['search']:.1f} s, load {layers[-1]['load']:.1f}",
                flush=True,
            )
            current = {}
    if child.wait():
        raise SystemExit(f"the quantization failed (exit status {child.returncode})")
    return {"layers": layers, **current}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=128, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "awq-speed")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, to try the script")
    args = parser.parse_args()
    shape = TINY if args.tiny else QWEN2_05B
    model_dir = args.work_dir / ("tiny" if args.tiny else "qwen2-0.5b")
    if not (model_dir / "config.json").exists():
        torch.manual_seed(0)
        _write_random_qwen2(model_dir, shape)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(
        0, shape["vocab_size"], (args.num_samples, args.seq_len), generator=generator
    )
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        ids_path = Path(tmp) / "ids.pt"
        torch.save(ids, ids_path)
        load_before = os.getloadavg()
        result = run(model_dir, ids_path, Path(tmp) / "out", args.device)
    layers = result["layers"]
    per_layer = [layer["record"] + layer["search"] for layer in layers]
    print(
        f"\nmodel: random Qwen2 ({shape['num_hidden_layers']} layers, hidden "
        f"{shape['hidden_size']}, intermediate {shape['intermediate_size']}); AWQ g128, clip "
        f"on; calibration {args.num_samples} x {args.seq_len} tokens; {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"total {result['seconds']:.0f} s ({result['seconds'] / 60:.1f} min); per layer "
        f"{min(per_layer):.1f}-{max(per_layer):.1f} s, mean {sum(per_layer) / len(per_layer):.1f}"
        f" (record {sum(x['record'] for x in layers) / len(layers):.1f}, search "
        f"{sum(x['search'] for x in layers) / len(layers):.1f}); peak RSS "
        f"{result['peak'] / (1 << 30):.2f} GiB; load average before {load_before[0]:.1f}, "
        f"during {min(x['load'] for x in layers):.1f}-{max(x['load'] for x in layers):.1f}"
    )


if __name__ == "__main__":
    main()
