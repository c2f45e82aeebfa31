"""End-to-end batch-1 decode speed of a Llama-3-8B-shaped model, int4 AWQ against fp16,
as a fraction of the bandwidth ceiling (GPU only).

At batch 1 every token reads every weight once, so the ceiling is ``copy bandwidth /
bytes of weights read per token`` (all weights but the embedding table, of which a token
reads one row). The bandwidth is measured here, as a device-to-device copy.

Weights are random, written as a checkpoint (fp16, then AutoAWQ GEMM int4) in a temporary
directory (about 16 GB at most on disk at a time) and loaded as any model is; the engine
then runs as served: scheduler, CUDA graphs, sampler.

    .venv/bin/python benchmarks/bench_decode.py [--new-tokens 256] [--group-size 128]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
from random_checkpoints import write_llama_checkpoint
from torch import nn

LLAMA3_8B = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    hidden_act="silu",
    tie_word_embeddings=False,
)


def bytes_read_per_token(model: nn.Module) -> int:
    embedding = model.model.embed_tokens.weight
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers())}
    tensors.pop(embedding.data_ptr())
    if model.lm_head.weight.data_ptr() == embedding.data_ptr():  # tied: the head reads it all
        tensors[embedding.data_ptr()] = embedding
    rotary = {model.model.rotary.cos.data_ptr(), model.model.rotary.sin.data_ptr()}
    return sum(t.nbytes for ptr, t in tensors.items() if ptr not in rotary)


def copy_bandwidth(num_bytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device memory bandwidth in bytes/s, from a copy (each byte read once, written once)."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * num_bytes * repeats / (start.elapsed_time(end) / 1e3)


def decode_tokens_per_s(model_dir: Path, new_tokens: int) -> tuple[float, int]:
    from engine import LLM, SamplingParams

    llm = LLM(str(model_dir), dtype="float16", max_num_seqs=1, max_model_len=2048)
    engine = llm.engine
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    prompt = [(31 * i) % 100_000 + 100 for i in range(32)]
    for request_id in ("warmup", "timed"):
        engine.add_request(request_id, prompt, params)
        engine.step()  # prefill (and the first token)
        torch.cuda.synchronize()
        start = time.perf_counter()
        num_steps = 0
        while engine.has_unfinished:
            engine.step()
            num_steps += 1
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    weight_bytes = bytes_read_per_token(engine.runner.model)
    del llm, engine
    gc.collect()
    torch.cuda.empty_cache()
    return num_steps / elapsed, weight_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_decode.py measures GPU decode speed and needs CUDA; no CUDA device found.")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    print(f"{'weights':>10} {'GB/token':>9} {'tok/s':>8} {'ceiling':>8} {'of ceiling':>11}")
    for name, group_size in (("fp16", None), (f"int4 g{args.group_size}", args.group_size)):
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            write_llama_checkpoint(model_dir, LLAMA3_8B, group_size)
            tokens_per_s, weight_bytes = decode_tokens_per_s(model_dir, args.new_tokens)
        ceiling = bandwidth / weight_bytes
        print(
            f"{name:>10} {weight_bytes / 1e9:>9.2f} {tokens_per_s:>8.1f} {ceiling:>8.1f} "
            f"{tokens_per_s / ceiling:>10.0%}"
        )


if __name__ == "__main__":
    main()
