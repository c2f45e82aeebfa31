"""Host overhead of one CPU decode step on Qwen2-0.5B's shapes: the time in the weight
layers (the quantized matmuls, the LM head, the embedding lookup) against everything
else in the step (the torch ops around them: norms, rotary, KV write, attention, the
runner and the sampler), and the torch ops the profiler sees outside the weight layers.

Times are the process's CPU time (``time.process_time``: all of its threads, so all
of the step's work; a shared machine's other processes then add cache misses but not
their own time slices), medians over ``--steps`` unprofiled steps. The op counts and
self-CPU times come from a second run of the same steps under torch.profiler (which
slows every op, so its times are for comparing two runs, not for adding to the others).
Op counts are what a loaded machine cannot move.

    .venv/bin/python benchmarks/bench_cpu_host.py --model /work/bench-cpu/awq [--steps 20]

Without ``--model`` the random checkpoint is written into ``--work-dir`` as bench_cpu.py
writes it (``write_checkpoints``).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WEIGHTS = "weight layer"  # the profiler's label for a weight layer's forward


class WeightClock:
    """Wraps the forward of every weight layer (linears, quantized or not, and the
    embedding) to add up its time and label its ops for the profiler."""

    def __init__(self, model: nn.Module):
        from engine.layers.cpu_quant import Int4Linear, Int8Embedding, Int8Linear

        kinds = (nn.Linear, nn.Embedding, Int4Linear, Int8Linear, Int8Embedding)
        self.seconds = 0.0
        self.num_layers = 0
        for module in model.modules():
            if isinstance(module, kinds):
                module.forward = self._timed(module.forward)
                self.num_layers += 1

    def _timed(self, forward: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                with torch.profiler.record_function(WEIGHTS):
                    return forward(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - start

        return timed


class ModelClock:
    """Adds up the time of the model's ``forward`` and ``compute_logits`` (what is left of
    the step is the runner's staging, the sampler and the scheduler)."""

    def __init__(self, model: nn.Module):
        self.seconds = 0.0
        for name in ("forward", "compute_logits"):
            setattr(model, name, self._timed(getattr(model, name)))

    def _timed(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - start

        return timed


def under_weights(event) -> bool:
    while event is not None:
        if event.name == WEIGHTS:
            return True
        event = event.cpu_parent
    return False


def profile_steps(step: Callable, num_steps: int) -> tuple[collections.Counter, dict]:
    """(top-level op counts, self-CPU microseconds by op name) outside the weight layers,
    over ``num_steps`` steps."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(num_steps):
            step()
    counts: collections.Counter = collections.Counter()
    self_us: dict[str, float] = collections.defaultdict(float)
    for event in prof.events():
        if event.name == WEIGHTS or under_weights(event):
            continue
        self_us[event.name] += event.self_cpu_time_total
        parent = event.cpu_parent
        if parent is None or not parent.name.startswith("aten::"):
            counts[event.name] += 1  # an op the Python code called (not one inside another)
    return counts, self_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a checkpoint (default: write one)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-cpu"))
    parser.add_argument("--quantization", default="int4")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="decode steps timed")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    parser.add_argument("--top", type=int, default=25, help="ops listed by self-CPU time")
    args = parser.parse_args()

    from benchmarks.bench_cpu import QWEN2_05B, prompts, write_checkpoints
    from engine import LLM, SamplingParams

    model_dir = args.model
    if model_dir is None:
        model_dir = write_checkpoints(args.work_dir, QWEN2_05B, "q4_0")["awq"]
    warmup = 3
    new_tokens = 2 + warmup + 2 * args.steps  # one left over: the request is still running
    llm = LLM(
        str(model_dir),
        dtype=args.dtype,
        quantization=args.quantization,
        threads=args.threads,
        kv_cache_memory=0.1,
        max_model_len=args.prompt_len + new_tokens + 16,
        max_num_seqs=args.batch,
    )
    core = llm.engine.core
    clock = WeightClock(core.runner.model)
    model_clock = ModelClock(core.runner.model)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(prompts(args.batch, args.prompt_len, QWEN2_05B["vocab_size"])):
        llm.engine.add_request(f"bench-{i}", prompt, params)
    for _ in range(1 + warmup):  # the prefill, then a few decode steps
        core.step()

    step_ms, weight_ms, model_ms = [], [], []
    for _ in range(args.steps):
        weights_before, model_before = clock.seconds, model_clock.seconds
        start = time.process_time()
        core.step()
        step_ms.append((time.process_time() - start) * 1e3)
        weight_ms.append((clock.seconds - weights_before) * 1e3)
        model_ms.append((model_clock.seconds - model_before) * 1e3)
    other_ms = [s - w for s, w in zip(step_ms, weight_ms)]
    outside_model_ms = [s - m for s, m in zip(step_ms, model_ms)]
    counts, self_us = profile_steps(core.step, args.steps)
    assert core.has_unfinished, "the request ended before the profiled steps"

    print(
        f"{model_dir} quantization {args.quantization}, dtype {llm.engine.dtype}, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}; decode of {args.batch} sequence(s) at "
        f"context ~{args.prompt_len}"
    )
    print(f"{clock.num_layers} weight layers timed")
    print()
    print("| per decode step (median CPU time) | ms |")
    print("|---|---|")
    print(f"| whole step | {statistics.median(step_ms):.2f} |")
    print(f"| weight layers | {statistics.median(weight_ms):.2f} |")
    print(f"| everything else | {statistics.median(other_ms):.2f} |")
    print(f"| of which outside the model | {statistics.median(outside_model_ms):.2f} |")
    n = args.steps
    print()
    print(
        f"outside the weight layers, per step (profiled): {sum(counts.values()) / n:.0f} "
        f"ops called, {sum(self_us.values()) / n / 1e3:.2f} ms self CPU"
    )
    print()
    print("| op | calls/step | self CPU us/step |")
    print("|---|---|---|")
    for name, us in sorted(self_us.items(), key=lambda item: -item[1])[: args.top]:
        print(f"| {name} | {counts[name] / n:.0f} | {us / n:.0f} |")


if __name__ == "__main__":
    main()
