"""AWQ vs round-to-nearest int4: perplexity, wall time and peak memory of the quantizer.

Builds a ~100M-parameter random Llama (fp32) with planted outlier input channels (a few
channels of every norm weight scaled up, as in real LLM activations), quantizes it with
RTN and with AWQ (each in a fresh process, for its peak RSS), and reports perplexity.

A random model's perplexity on real text is about its vocabulary size whatever its
weights, so quantization damage would not show. Instead the fp32 model writes its own
text (sampled at temperature 1): calibration sequences and held-out sequences. On the
held-out ones the fp32 model is as good as a model gets, and any rise is damage.

    .venv/bin/python benchmarks/bench_awq.py [--num-samples 8] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from engine.demo import write_tokenizer
from engine.quant.perplexity import transformers_perplexity

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
before = status("VmRSS")
config = QuantizeConfig(method=method, group_size=int(group_size), num_samples=ids.shape[0],
                        seq_len=ids.shape[1], device="cpu")
start = time.perf_counter()
quantize(model_dir, out_dir, config, calib_ids=ids)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "before": before, "peak": status("VmHWM")}))
"""

NUM_OUTLIER_CHANNELS = 8
OUTLIER_GAIN = 20.0


def build_model(out_dir: Path, seed: int) -> int:
    """Write the random fp32 Llama with outlier channels; return its parameter count."""
    tokenizer = write_tokenizer(out_dir)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        intermediate_size=2560,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).float()
    # The same channels in every layer, as real outlier channels are.
    outliers = torch.randperm(config.hidden_size)[:NUM_OUTLIER_CHANNELS]
    with torch.no_grad():
        # Logits of std ~3 on the normed final state: distributions peaked enough for
        # sampled text to have structure (HF's std 0.02 gives near-uniform ones).
        model.lm_head.weight.normal_(0, 3 / config.hidden_size**0.5)
        for layer in model.model.layers:
            layer.input_layernorm.weight[outliers] *= OUTLIER_GAIN
            layer.post_attention_layernorm.weight[outliers] *= OUTLIER_GAIN
    model.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def sample_sequences(model_dir: Path, num_seqs: int, seq_len: int, seed: int) -> torch.Tensor:
    """[num_seqs, seq_len] token ids written by the fp32 model at temperature 1, from BOS.
    (transformers' generate: on this CPU it samples a batch faster than our engine.)"""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    bos = torch.full((num_seqs, 1), model.config.bos_token_id)
    torch.manual_seed(seed)
    return model.eval().generate(
        bos,
        attention_mask=torch.ones_like(bos),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_new_tokens=seq_len - 1,
        max_new_tokens=seq_len - 1,
        pad_token_id=model.config.eos_token_id,
    )


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
    parser.add_argument("--num-samples", type=int, default=8, help="calibration sequences")
    parser.add_argument("--held-out", type=int, default=16, help="held-out sequences")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gib = 1 << 30
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32_dir = tmp / "fp32"
        num_params = build_model(fp32_dir, args.seed)
        start = time.perf_counter()
        ids = sample_sequences(fp32_dir, args.num_samples + args.held_out, args.seq_len, args.seed)
        sample_seconds = time.perf_counter() - start
        calib, held_out = ids[: args.num_samples], ids[args.num_samples :].tolist()
        torch.save(calib, tmp / "calib.pt")
        rows = [("fp32", transformers_perplexity(fp32_dir, held_out, "cpu").value, None)]
        for method in ("rtn", "awq"):
            out = tmp / method
            stats = quantize_in_subprocess(fp32_dir, out, method, tmp / "calib.pt", args.group_size)
            rows.append((method, transformers_perplexity(out, held_out, "cpu").value, stats))

    print(
        f"\nmodel: random Llama, {num_params / 1e6:.0f}M parameters (hidden 768, 12 layers, "
        f"MHA 12 heads, vocab 2048), fp32 weights {num_params * 4 / gib:.2f} GiB; "
        f"{NUM_OUTLIER_CHANNELS} outlier channels x{OUTLIER_GAIN:g} in every norm"
    )
    print(
        f"text: {args.num_samples} calibration + {args.held_out} held-out sequences of "
        f"{args.seq_len} tokens sampled from the fp32 model ({sample_seconds:.0f} s); "
        f"int4, group size {args.group_size}, on CPU\n"
    )
    print(
        "| weights | held-out perplexity | vs fp32 | quantize wall s | peak RSS GiB "
        "| RSS before GiB |"
    )
    print("|---|---|---|---|---|---|")
    reference = rows[0][1]
    for name, ppl, stats in rows:
        if stats is None:
            print(f"| {name} | {ppl:.3f} | - | - | - | - |")
            continue
        print(
            f"| {name} int4 | {ppl:.3f} | {100 * (ppl / reference - 1):+.2f}% "
            f"| {stats['seconds']:.0f} | {stats['peak'] / gib:.2f} | {stats['before'] / gib:.2f} |"
        )


if __name__ == "__main__":
    main()
