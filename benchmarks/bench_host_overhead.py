"""Host work per decode step: the time of one engine step minus the model's own compute
(its ``forward`` and ``compute_logits``, timed by wrapping them), on CPU with a tiny
random Llama, so that what is left is what a GPU would wait on between kernels.

(a) steady decode at batch 1, 16 and 64, greedy and sampled; (b) one long generation at
a fixed batch: host time per step around token 100 and around token 1900 (per-token cost
must not grow with the tokens generated).

It times the step the engine loop thread runs: ``engine.core.step`` where the engine has
a core, else ``engine.step``.

    .venv/bin/python benchmarks/bench_host_overhead.py [--steps 50] [--long-batch 16]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from engine import LLM, SamplingParams
from engine.demo import write_tokenizer

PROMPT_LEN = 16
MAX_MODEL_LEN = 2048
MODES = {
    "greedy": dict(temperature=0.0),
    # Unseeded, filtered, penalised: every part of the sampler that keeps state.
    "sampled": dict(temperature=0.8, top_p=0.95, frequency_penalty=0.2),
}


def build_checkpoint(out_dir: Path) -> None:
    tokenizer = write_tokenizer(out_dir)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_MODEL_LEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).float().save_pretrained(out_dir)


class ModelClock:
    """Wraps a model's ``forward`` and ``compute_logits`` and adds up their time."""

    def __init__(self, model: torch.nn.Module):
        self.seconds = 0.0
        for name in ("forward", "compute_logits"):
            setattr(model, name, self._timed(getattr(model, name)))

    def _timed(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


class Bench:
    def __init__(self, model_dir: Path):
        self.llm = LLM(str(model_dir), device="cpu", dtype="float32", kv_cache_memory=0.5)
        engine = self.llm.engine
        owner = getattr(engine, "core", engine)
        self.step_name = "engine.core.step" if owner is not engine else "engine.step"
        self.step = owner.step
        self.clock = ModelClock(owner.runner.model)
        self._ids = 0

    def start(self, batch: int, max_tokens: int, mode: str) -> None:
        """Add ``batch`` requests and run their prefill, leaving them all decoding."""
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, **MODES[mode])
        for _ in range(batch):
            self._ids += 1
            prompt = [(37 * self._ids + 11 * j) % 2000 + 10 for j in range(PROMPT_LEN)]
            self.llm.engine.add_request(f"bench-{self._ids}", prompt, params)
        self.step()

    def timed_step(self) -> tuple[float, float]:
        """(host seconds, model seconds) of one step."""
        model_before = self.clock.seconds
        start = time.perf_counter()
        self.step()
        total = time.perf_counter() - start
        model = self.clock.seconds - model_before
        return total - model, model

    def finish(self) -> None:
        while self.llm.engine.has_unfinished:
            self.step()


def steady(bench: Bench, batch: int, mode: str, num_steps: int) -> tuple[float, float]:
    """Median host and model ms per decode step at ``batch``."""
    warmup = 5
    bench.start(batch, warmup + num_steps + 1, mode)
    for _ in range(warmup):
        bench.step()
    timings = [bench.timed_step() for _ in range(num_steps)]
    bench.finish()
    host, model = zip(*timings)
    return statistics.median(host) * 1e3, statistics.median(model) * 1e3


def long_run(bench: Bench, batch: int, mode: str, marks: tuple[int, ...]) -> dict[int, float]:
    """Median host ms per step over 21 steps centred on each generated-token mark."""
    window = 10
    last = max(marks) + window + 1
    bench.start(batch, last + 1, mode)
    host_ms: list[float] = [0.0]  # token 1 came with the prefill
    for _ in range(last - 1):
        host_ms.append(bench.timed_step()[0] * 1e3)
    bench.finish()
    return {m: statistics.median(host_ms[m - 1 - window : m + window]) for m in marks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="decode steps timed per row")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the fastest counts")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--long-batch", type=int, default=16)
    parser.add_argument("--long-mode", choices=MODES, default="sampled")
    parser.add_argument("--skip-long", action="store_true")
    # One thread: on a shared 2-core machine a second one mostly waits in barriers.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        build_checkpoint(Path(tmp))
        bench = Bench(Path(tmp))
        steady(bench, 4, "sampled", 5)  # warm-up
        # The fastest of a few runs: on a shared machine the others' load only adds time.
        rows = [
            (mode, batch, *min(steady(bench, batch, mode, args.steps) for _ in range(args.repeats)))
            for mode in MODES
            for batch in args.batches
        ]
        long_ms = None
        if not args.skip_long:
            long_ms = long_run(bench, args.long_batch, args.long_mode, (100, 1900))
    print(f"timed: {bench.step_name}; tiny random Llama (hidden 64, 2 layers), fp32, CPU")
    threads = torch.get_num_threads()
    print(f"machine: {platform.machine()}, {threads} threads, torch {torch.__version__}")
    print(
        f"prompt {PROMPT_LEN} tokens; per row the fastest of {args.repeats} runs' median "
        f"over {args.steps} decode steps"
    )
    print()
    print("| sampling | batch | host ms/step | model ms/step |")
    print("|---|---|---|---|")
    for mode, batch, host, model in rows:
        print(f"| {mode} | {batch} | {host:.2f} | {model:.2f} |")
    if long_ms is not None:
        print()
        print(f"long generation, batch {args.long_batch}, {args.long_mode}: host ms/step")
        print("| at token | host ms/step |")
        print("|---|---|")
        for mark, host in long_ms.items():
            print(f"| {mark} | {host:.2f} |")


if __name__ == "__main__":
    main()
