"""Load test of the HTTP server: N concurrent streaming chat requests over loopback.

Starts `edgechat serve` (the demo model unless --model) on a free port, or uses --url.
Reports throughput (generated tokens / wall time), time to first token and inter-token
latency percentiles as the clients see them, errors (must be 0) and the KV blocks still
in use once all requests are done (must be 0, read from /metrics).

    .venv/bin/python benchmarks/bench_server.py [--requests 64] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    num_tokens: int = 0
    error: str | None = None


@contextmanager
def serve(model: str | None, api_key: str | None) -> Iterator[str]:
    """`edgechat serve` on a free port; yields its URL once the model is loaded."""
    command = [sys.executable, "-m", "server.cli", "serve", "--port", "0"]
    command += ["--model", model] if model else []
    command += ["--api-key", api_key] if api_key else []
    # NOTE: the log must stay at INFO, where uvicorn announces the port it took.
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()
    try:
        url = None
        while url is None:
            if process.poll() is not None:
                raise RuntimeError("edgechat serve exited:\n" + "".join(log))
            url = next(
                (m.group(1) for line in list(log) if (m := re.search(r"running on (\S+)", line))),
                None,
            )
            time.sleep(0.1)
        while httpx.get(f"{url}/health").status_code != 200:
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


async def one_request(client: httpx.AsyncClient, model: str, i: int, max_tokens: int) -> Result:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Request {i}: tell me a long story."}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": i,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = Result()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    result.error = chunk["error"]["message"]
                elif chunk.get("usage"):
                    result.num_tokens = chunk["usage"]["completion_tokens"]
                elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    now = time.perf_counter()
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.gaps.append(now - last)
                    last = now
    except httpx.HTTPError as e:
        result.error = repr(e)
    return result


async def run_load(url: str, headers: dict, num_requests: int, max_tokens: int):
    limits = httpx.Limits(max_connections=num_requests + 8)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=600, limits=limits
    ) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        start = time.perf_counter()
        results = await asyncio.gather(
            *(one_request(client, model, i, max_tokens) for i in range(num_requests))
        )
        return model, results, time.perf_counter() - start


def blocks_in_use(url: str, headers: dict) -> int:
    """KV blocks held once the engine has caught up (its stats lag by one step)."""
    deadline = time.monotonic() + 5
    while True:
        text = httpx.get(f"{url}/metrics", headers=headers).text
        used = int(float(re.search(r"^edgechat:kv_cache_blocks_used\{.*\} (\S+)$", text, re.M)[1]))
        if used == 0 or time.monotonic() > deadline:
            return used
        time.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="benchmark this server instead of starting one")
    parser.add_argument("--model", help="checkpoint for the server started here (default: demo)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with serve(args.model, args.api_key) if args.url is None else _given(args.url) as url:
        model, results, seconds = asyncio.run(
            run_load(url, headers, args.requests, args.max_tokens)
        )
        used = blocks_in_use(url, headers)
    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [gap for r in ok for gap in r.gaps]
    num_tokens = sum(r.num_tokens for r in ok)
    rows = [
        ("model", model),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"),
        ("concurrent streaming requests", str(args.requests)),
        ("max_tokens per request", str(args.max_tokens)),
        ("wall time", f"{seconds:.2f} s"),
        ("generated tokens", str(num_tokens)),
        ("throughput", f"{num_tokens / seconds:.1f} tok/s"),
        (
            "TTFT p50 / p99",
            f"{percentile(ttfts, 50) * 1e3:.0f} / {percentile(ttfts, 99) * 1e3:.0f} ms",
        ),
        (
            "ITL p50 / p99",
            f"{percentile(gaps, 50) * 1e3:.1f} / {percentile(gaps, 99) * 1e3:.1f} ms",
        ),
        ("errors", str(len(errors))),
        ("KV blocks in use after", str(used)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'metric'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    for error in errors[:5]:
        print(f"error: {error}", file=sys.stderr)
    if errors or used:
        sys.exit(1)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url.rstrip("/")


if __name__ == "__main__":
    main()
