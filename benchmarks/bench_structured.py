"""Overhead of structured outputs: tokens/s of a json_schema request against the same
request unconstrained, single stream and 8 concurrent, on the demo model; and the time to
compile a schema, first and cached.

Each constrained run is paired with an unconstrained one of exactly the same lengths
(``ignore_eos``, ``max_tokens`` set to what the constrained request produced), same
seeds, temperature 1; the two alternate, which goes first switching each repeat. Two
figures a side: the fastest repeat's tokens per wall-clock second (a shared machine's
load only ever slows a run down) and the median tokens per CPU second of the process
(which a busy neighbour disturbs less). Ratios are what to compare.

    .venv/bin/python benchmarks/bench_structured.py [--repeats 5] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from engine import LLM, SamplingParams
from engine.structured import StructuredOutputSpec

# ~130 tokens of output on the demo model: its strings run to their maxLength.
SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999999},
        "status": {"enum": ["open", "closed", "pending"]},
        "items": {
            "type": "array",
            "minItems": 6,
            "maxItems": 6,
            "items": {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "maxLength": 12},
                    "count": {"type": "integer", "minimum": 0, "maximum": 99},
                },
                "required": ["label", "count"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["id", "status", "items"],
    "additionalProperties": False,
}
PROMPT = "Report the inventory as JSON:"


def compile_ms(llm: LLM, spec: StructuredOutputSpec) -> tuple[float, float]:
    """Milliseconds to compile ``spec`` the first time, and again (from the cache)."""
    compiler = llm.engine.inputs.grammars
    times = []
    for _ in range(2):
        start = time.perf_counter()
        compiler.compile(spec)
        times.append((time.perf_counter() - start) * 1e3)
    return times[0], times[1]


def run(llm: LLM, params: list[SamplingParams]) -> tuple[float, float, list[int]]:
    """Tokens per wall second and per CPU second of ``params`` run at once, and each
    request's token count."""
    wall, cpu = time.perf_counter(), time.process_time()
    outputs = llm.generate([PROMPT] * len(params), params)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    lengths = [len(o.token_ids) for o in outputs]
    return sum(lengths) / wall, sum(lengths) / cpu, lengths


def measure(llm: LLM, spec: StructuredOutputSpec, seeds: list[int], repeats: int) -> dict:
    """Each side's fastest wall-clock and median CPU-time tokens/s over ``repeats``
    pairs, the order within a pair alternating; and the tokens a request."""
    constrained = [
        SamplingParams(max_tokens=400, temperature=1.0, seed=s, structured=spec) for s in seeds
    ]
    lengths = run(llm, constrained)[2]
    free = [
        SamplingParams(max_tokens=n, temperature=1.0, seed=s, ignore_eos=True)
        for s, n in zip(seeds, lengths)
    ]
    results: dict[str, list] = {"json_schema": [], "unconstrained": []}
    for repeat in range(repeats):
        pair = [("json_schema", constrained), ("unconstrained", free)]
        for side, params in pair if repeat % 2 == 0 else pair[::-1]:
            wall, cpu, got = run(llm, params)
            assert got == lengths
            results[side].append((wall, cpu))
    summary = {"tokens": sum(lengths) / len(seeds)}
    for side, pairs in results.items():
        summary[side] = (max(w for w, _ in pairs), statistics.median(c for _, c in pairs))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    # One torch thread: on a loaded machine, threads that wait on each other make every
    # small op of this small model as slow as the slowest core.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    llm = LLM(None, device=args.device, kv_cache_memory=0.25)
    load_s = time.perf_counter() - start
    # The tokenizer's token trie, built once per engine by its first structured request.
    start = time.perf_counter()
    llm.engine.inputs.grammars.compile(StructuredOutputSpec(regex="a"))
    trie_ms = (time.perf_counter() - start) * 1e3
    spec = StructuredOutputSpec(json_schema=json.dumps(SCHEMA))
    first_ms, cached_ms = compile_ms(llm, spec)
    measure(llm, spec, [0], 1)  # warm-up
    rows = [
        (name, measure(llm, spec, seeds, args.repeats))
        for name, seeds in (("single stream", [1]), ("8 concurrent", list(range(8))))
    ]
    print(f"model: edgechat demo (random Llama, hidden 256, 4 layers, vocab 2048), {args.device}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"engine load {load_s:.1f} s; first structured request's token trie {trie_ms:.0f} ms")
    print(f"schema compile: first {first_ms:.2f} ms, cached {cached_ms:.3f} ms")
    print(
        f"temperature 1, seeded; {args.repeats} alternating pairs: wall = fastest, "
        "CPU = median tokens per CPU-second"
    )
    print()
    print(
        "| workload | tokens/request | json_schema tok/s (wall, CPU) | unconstrained tok/s "
        "(wall, CPU) | ratio wall | ratio CPU |"
    )
    print("|---|---|---|---|---|---|")
    for name, row in rows:
        (ours_wall, ours_cpu), (free_wall, free_cpu) = row["json_schema"], row["unconstrained"]
        print(
            f"| {name} | {row['tokens']:.0f} | {ours_wall:.1f}, {ours_cpu:.1f} | "
            f"{free_wall:.1f}, {free_cpu:.1f} | {ours_wall / free_wall:.3f} | "
            f"{ours_cpu / free_cpu:.3f} |"
        )


if __name__ == "__main__":
    main()
