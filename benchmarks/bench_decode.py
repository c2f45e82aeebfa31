"""Decode speed of Llama-3-8B- and Llama-3.2-3B-shaped models, int4 AWQ g128 against
fp16, at batch 1 and 8, as a fraction of the copy-bandwidth ceiling measured in the same
run; then the time and memory of capturing CUDA graphs for every decode batch size the
engine captures up to max_num_seqs = 64.

Weights are random and drawn directly on the GPU (nothing on disk). What is timed is
the body of the engine's decode graph: the model forward and the LM head over the paged
KV cache (context 512 per sequence), captured in one CUDA graph and replayed; the
scheduler, sampler and host staging are not (the engine's own benchmarks time those).
Bytes per step: every weight but the embedding table (a token reads one row of it),
plus each sequence's KV cache. Without CUDA it runs the same code eagerly on a tiny
model on the CPU (a check that it works; its numbers mean nothing).

    python benchmarks/bench_decode.py [--out decode.json] [--models Llama-3-8B]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig

from engine.cuda_graphs import capture_sizes
from engine.kv_cache import allocate_kv_cache
from engine.layers.attention import AttentionMetadata
from engine.loader import build_model
from engine.quant.config import AWQConfig

COMMON = dict(
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    num_key_value_heads=8,
)
# Llama-3-8B first: the goals are set at its shape, so a run cut short still has it.
MODELS = {
    "Llama-3-8B": dict(
        COMMON,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        tie_word_embeddings=False,
    ),
    "Llama-3.2-3B": dict(
        COMMON,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        tie_word_embeddings=True,
    ),
}
DRY_MODEL = dict(
    COMMON,
    vocab_size=512,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
GROUP_SIZE, BLOCK_SIZE, CONTEXT = 128, 16, 512
MAX_NUM_SEQS, MAX_MODEL_LEN = 64, 2048


def random_model(config: dict, group_size: int | None, device: torch.device) -> nn.Module:
    """The engine's model for ``config``, weights drawn at random on ``device``."""
    quant = AWQConfig(group_size=group_size) if group_size else None
    model = build_model(LlamaConfig(**config), quant, torch.float16, device)
    for param in model.parameters():
        param.data.normal_(0, 0.02)
    for name, buffer in model.named_buffers():
        if name.endswith((".qweight", ".qzeros")):  # any int32 packs eight valid int4s
            buffer.random_(-(2**31), 2**31 - 1)
        elif name.endswith(".scales"):
            buffer.uniform_(0, 0.004)
    return model


def weight_bytes_per_token(model: nn.Module) -> int:
    embedding = model.model.embed_tokens.weight
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers())}
    tensors.pop(embedding.data_ptr())
    if model.lm_head.weight.data_ptr() == embedding.data_ptr():  # tied: the head reads it all
        tensors[embedding.data_ptr()] = embedding
    rotary = {model.model.rotary.cos.data_ptr(), model.model.rotary.sin.data_ptr()}
    return sum(t.nbytes for ptr, t in tensors.items() if ptr not in rotary)


def kv_bytes_per_token(model: nn.Module) -> int:
    return sum(2 * a.num_kv_heads * a.head_dim * 2 for a in model.attention_layers())


def copy_bandwidth(device: torch.device) -> float:
    """Memory bandwidth in bytes/s from a device-to-device copy (read once, write once)."""
    num_bytes = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    start = time.perf_counter()
    for _ in range(20):
        dst.copy_(src)
    _sync(device)
    return 2 * num_bytes * 20 / (time.perf_counter() - start)


def decode_inputs(batch: int, context: int, device: torch.device):
    """One new token per sequence at position context - 1; sequence i owns its blocks."""
    blocks_per_seq = -(-MAX_MODEL_LEN // BLOCK_SIZE)
    tables = torch.arange(batch * blocks_per_seq, dtype=torch.int32, device=device)
    tables = tables.view(batch, blocks_per_seq)
    position = context - 1
    slots = tables[:, position // BLOCK_SIZE].to(torch.int64) * BLOCK_SIZE + position % BLOCK_SIZE
    meta = AttentionMetadata(
        slot_mapping=slots,
        block_tables=tables,
        seq_lens=torch.full((batch,), context, dtype=torch.int32, device=device),
        query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device=device),
    )
    input_ids = torch.zeros(batch, dtype=torch.int64, device=device)
    positions = torch.full((batch,), position, dtype=torch.int64, device=device)
    return input_ids, positions, meta, batch * blocks_per_seq


@torch.inference_mode()
def steps_per_s(model: nn.Module, batch: int, device: torch.device, num_steps: int) -> float:
    input_ids, positions, meta, num_blocks = decode_inputs(batch, CONTEXT, device)
    allocate_kv_cache(model, num_blocks, BLOCK_SIZE, torch.float16, device)

    def step() -> torch.Tensor:
        return model.compute_logits(model(input_ids, positions, meta))

    step()  # compiles the kernels
    run = step
    if device.type == "cuda":
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    run()
    _sync(device)
    start = time.perf_counter()
    for _ in range(num_steps):
        run()
    _sync(device)
    return num_steps / (time.perf_counter() - start)


@torch.inference_mode()
def graph_capture(model: nn.Module, device: torch.device) -> dict:
    """Capture every decode size up to MAX_NUM_SEQS, largest first sharing one memory pool,
    as the engine does: seconds and GPU memory the graphs keep."""
    sizes = capture_sizes(MAX_NUM_SEQS)
    input_ids, positions, meta, num_blocks = decode_inputs(MAX_NUM_SEQS, CONTEXT, device)
    allocate_kv_cache(model, num_blocks, BLOCK_SIZE, torch.float16, device)
    graphs, pool = [], None
    torch.cuda.synchronize()
    before = torch.cuda.memory_reserved(device)
    start = time.perf_counter()
    for size in reversed(sizes):
        sub = AttentionMetadata(
            slot_mapping=meta.slot_mapping[:size],
            block_tables=meta.block_tables[:size],
            seq_lens=meta.seq_lens[:size],
            query_start_loc=meta.query_start_loc[: size + 1],
        )
        model.compute_logits(model(input_ids[:size], positions[:size], sub))  # warm-up
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            model.compute_logits(model(input_ids[:size], positions[:size], sub))
        pool = graph.pool()
        graphs.append(graph)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    kept = torch.cuda.memory_reserved(device) - before
    return {"sizes": sizes, "seconds": seconds, "memory_mib": kept / 2**20}


def run(models: list[str], batches: list[int], out: Path | None) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dry_run = device.type != "cuda"
    bandwidth = copy_bandwidth(device)
    report = {"device": _device_name(device), "copy_bandwidth_gbs": bandwidth / 1e9, "rows": []}
    torch.manual_seed(0)
    for model_name in models[:1] if dry_run else models:  # the dry run has one tiny model
        config = DRY_MODEL if dry_run else MODELS[model_name]
        for weights, group_size in (("fp16", None), (f"int4 g{GROUP_SIZE}", GROUP_SIZE)):
            model = random_model(config, group_size, device)
            weight_bytes = weight_bytes_per_token(model)
            for batch in batches:
                row = {"model": model_name, "weights": weights, "batch": batch}
                try:
                    rate = steps_per_s(model, batch, device, num_steps=3 if dry_run else 100)
                except Exception as e:  # the GPU path's first run: keep measuring the rest
                    report["rows"].append(row | {"error": repr(e)})
                    _write(report, out)
                    continue
                step_bytes = weight_bytes + batch * CONTEXT * kv_bytes_per_token(model)
                report["rows"].append(
                    row
                    | {
                        "tok_s": rate * batch,
                        "gb_per_step": step_bytes / 1e9,
                        "of_ceiling": rate * step_bytes / bandwidth,
                    }
                )
                _write(report, out)
            if not dry_run and group_size and model_name == models[0]:  # int4, as served
                try:
                    capture = graph_capture(model, device)
                except Exception as e:  # as above
                    capture = {"error": repr(e)}
                report["graph_capture"] = {"model": model_name, **capture}
                _write(report, out)
            del model
            if not dry_run:
                torch.cuda.empty_cache()
    _write(report, out)
    return report


def _write(report: dict, out: Path | None) -> None:
    if out:  # after every measurement: a run cut short still reports what it did
        out.write_text(json.dumps(report, indent=1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu (dry run: a tiny model, eager; the numbers mean nothing)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    report = run(args.models, args.batches, args.out)
    print(f"{report['device']}: copy bandwidth {report['copy_bandwidth_gbs']:.0f} GB/s")
    print(
        f"{'model':>13} {'weights':>9} {'batch':>5} {'tok/s':>8} {'GB/step':>8} {'of ceiling':>10}"
    )
    for r in report["rows"]:
        measured = (
            f"failed: {r['error']}"
            if "error" in r
            else f"{r['tok_s']:>8.1f} {r['gb_per_step']:>8.2f} {r['of_ceiling']:>10.0%}"
        )
        print(f"{r['model']:>13} {r['weights']:>9} {r['batch']:>5} {measured}")
    if "graph_capture" in report:
        print("CUDA graph capture:", report["graph_capture"])


if __name__ == "__main__":
    main()
