"""llama.cpp's greedy decode speed on a GGUF, the llama.cpp row of benchmarks/bench_cpu.py.

Run by a Python that has llama-cpp-python (an environment of its own: it is no dependency
of the project), it prints one JSON line. It drives llama.cpp's own C API through the
bindings' ctypes layer, as llama.cpp's batched example does: the prompts in one batch,
then a batch of one token a sequence per step, the next token the argmax of its logits.
Tokens/s count the steps after every sequence has its first token, as bench_cpu.py does
for our engine.

    /work/bench-venv/bin/python benchmarks/llama_cpp_decode.py --model m.gguf \
        --prompts prompts.json --threads 2 --new-tokens 32 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import llama_cpp as llama
import numpy as np


def decode_tokens_per_s(model, prompts: list[list[int]], args: argparse.Namespace) -> float:
    num_seqs = len(prompts)
    params = llama.llama_context_default_params()
    params.n_ctx = num_seqs * (max(map(len, prompts)) + args.new_tokens + 16)
    params.n_batch = params.n_ubatch = max(512, sum(map(len, prompts)))
    params.n_seq_max = num_seqs
    params.n_threads = params.n_threads_batch = args.threads
    ctx = llama.llama_init_from_model(model, params)
    vocab_size = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))
    batch = llama.llama_batch_init(params.n_batch, 0, num_seqs)
    try:
        rows = [(token, pos, seq) for seq, p in enumerate(prompts) for pos, token in enumerate(p)]
        next_tokens = _decode(ctx, batch, rows, vocab_size)
        start = time.perf_counter()
        for step in range(args.new_tokens - 1):
            rows = [(t, len(p) + step, seq) for seq, (t, p) in enumerate(zip(next_tokens, prompts))]
            next_tokens = _decode(ctx, batch, rows, vocab_size)
        return num_seqs * (args.new_tokens - 1) / (time.perf_counter() - start)
    finally:
        llama.llama_batch_free(batch)
        llama.llama_free(ctx)


def _decode(ctx, batch, rows: list[tuple[int, int, int]], vocab_size: int) -> list[int]:
    """One llama_decode of ``(token, position, sequence)`` rows; each sequence's next
    token from the logits of its last row."""
    last_row = {seq: i for i, (_, _, seq) in enumerate(rows)}
    for i, (token, pos, seq) in enumerate(rows):
        batch.token[i], batch.pos[i] = token, pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = last_row[seq] == i
    batch.n_tokens = len(rows)
    if llama.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")
    return [
        int(np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, i), (vocab_size,)).argmax())
        for _, i in sorted(last_row.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True, help="JSON: lists of token ids")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    prompts = json.loads(args.prompts.read_text())[: args.concurrency]
    llama.llama_backend_init()
    start = time.perf_counter()
    model = llama.llama_model_load_from_file(
        str(args.model).encode(), llama.llama_model_default_params()
    )
    load_s = time.perf_counter() - start
    single = decode_tokens_per_s(model, prompts[:1], args)
    concurrent = decode_tokens_per_s(model, prompts, args)
    llama.llama_model_free(model)
    result = {
        "single": single,
        "concurrent": concurrent,
        "load_s": load_s,
        "weight_bytes": args.model.stat().st_size,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
