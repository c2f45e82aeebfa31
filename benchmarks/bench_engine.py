"""Engine vs transformers `generate` on the same ~100M-parameter random Llama, fp32, CPU.

(a) single-stream decode tokens/s; (b) aggregate tokens/s of 8 concurrent requests
against transformers running them one after another. Ratios are what to compare: the
machines are shared and noisy, so both sides run in this one process, interleaved.

    .venv/bin/python benchmarks/bench_engine.py [--new-tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from engine import LLM, SamplingParams
from engine.demo import write_tokenizer

CONFIG = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


def build_checkpoint(out_dir: Path) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).float().eval()
    model.save_pretrained(out_dir)
    write_tokenizer(out_dir)  # ids past its vocabulary decode to "": fine for timing
    return model


def prompts(num: int, length: int) -> list[list[int]]:
    return [[(97 * i + 31 * j) % 31000 + 100 for j in range(length)] for i in range(num)]


def hf_tokens_per_s(model, batch: list[list[int]], new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in batch:
            model.generate(
                torch.tensor([prompt]),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
    return len(batch) * new_tokens / (time.perf_counter() - start)


def engine_tokens_per_s(llm: LLM, batch: list[list[int]], new_tokens: int) -> float:
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(batch, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == new_tokens for o in outputs)
    return len(batch) * new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = build_checkpoint(Path(tmp))
        num_params = sum(p.numel() for p in hf_model.parameters())
        llm = LLM(tmp, kv_cache_memory=1.0, dtype="float32")
        single, eight = prompts(1, args.prompt_len), prompts(8, args.prompt_len)
        engine_tokens_per_s(llm, single, 8)  # warm-up both sides
        hf_tokens_per_s(hf_model, single, 8)
        rows = []
        for name, batch in (("single stream", single), ("8 concurrent", eight)):
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(engine_tokens_per_s(llm, batch, args.new_tokens))
                theirs.append(hf_tokens_per_s(hf_model, batch, args.new_tokens))
            rows.append((name, statistics.median(ours), statistics.median(theirs)))
    print(f"model: random Llama, {num_params / 1e6:.0f}M params, fp32, CPU")
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(
        f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, median of {args.repeats}"
    )
    print()
    print("| workload | edgechat tok/s | transformers tok/s | ratio |")
    print("|---|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |")


if __name__ == "__main__":
    main()
