"""Peak memory while loading a checkpoint: the loader must never hold the weights twice.

Writes a random Llama of about ``--size-gb`` GB (fp32 safetensors), then loads it with
the engine's loader in a fresh process and reports the growth of peak RSS over the
process's RSS just before loading, as a multiple of the weights' size (goal: <= 1.3x).

    .venv/bin/python benchmarks/bench_load_memory.py [--size-gb 1.0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = """
import json, resource, sys
from pathlib import Path
import torch
from engine.loader import load_config, load_model

def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

model_dir = Path(sys.argv[1])
config = load_config(model_dir)
before = rss_bytes()
model = load_model(model_dir, config, torch.float32, torch.device("cpu"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "peak": peak, "after": rss_bytes()}))
"""


def write_checkpoint(out_dir: Path, size_gb: float) -> int:
    import torch
    import transformers
    from safetensors.torch import save_file

    hidden = 2048
    per_layer = 4 * hidden * hidden + 3 * hidden * 5632
    num_layers = max(1, int((size_gb * 1e9 / 4 - 2 * 32000 * hidden) / per_layer))
    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=5632,
        num_hidden_layers=num_layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out_dir)
    with torch.device("meta"):
        shapes = {
            name: p.shape for name, p in transformers.LlamaForCausalLM(config).named_parameters()
        }
    # Write tensor by tensor, so this script's own peak does not matter to the measurement.
    total = 0
    for index, (name, shape) in enumerate(shapes.items()):
        tensor = torch.randn(shape) * 0.02
        save_file({name: tensor}, out_dir / f"part-{index:04d}.safetensors")
        total += tensor.numel() * 4
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_checkpoint(Path(tmp), args.size_gb)
        result = subprocess.run(
            [sys.executable, "-c", MEASURE, tmp], capture_output=True, text=True, check=True
        )
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    growth = numbers["peak"] - numbers["before"]
    print("| weights GB | RSS before GB | peak RSS GB | peak growth / weights |")
    print("|---|---|---|---|")
    print(
        f"| {weights / 1e9:.2f} | {numbers['before'] / 1e9:.2f} | {numbers['peak'] / 1e9:.2f} "
        f"| {growth / weights:.2f}x |"
    )


if __name__ == "__main__":
    main()
