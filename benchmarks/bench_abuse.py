"""Normal streams while hostile clients hammer the server: does anyone else slow down?

Starts `edgechat serve` (the demo model unless --model) as bench_server.py does, runs
``--requests`` normal streaming chats once alone and once while abusers run: floods of
prompts past the admission limit, megabyte prompts, 10,000 stop strings, deeply nested
and NaN JSON, text/plain POSTs, clients that never read their stream and bodies that
never finish arriving. Reports the normal streams' inter-token latency p50/p99 in both
runs (the goal: p99 with abuse within 1.5x of without) and what the abusers got back.

The abusers run in a process of their own (an event loop of their own: the normal
clients' gaps are not stretched by the abusers' client work) and connect from
127.0.0.2, another client address, as hostile clients on a network would.

    .venv/bin/python benchmarks/bench_abuse.py [--requests 64] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import sys
from collections import Counter

import httpx
from bench_server import Result, one_request, percentile, serve

NUM_NEVER_READING = 4
NUM_SLOW_BODIES = 8
NUM_FLOODERS = 4
# The abusers' own client address (all of 127.0.0.0/8 is the loopback).
ABUSER_ADDRESS = "127.0.0.2"


def abusive_bodies(max_admitted: int) -> list[tuple[str, bytes, str]]:
    """(path, body, content type) of requests a server must refuse cheaply."""
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return [
        ("/v1/completions", json.dumps({"prompt": ["hello"] * (max_admitted + 1)}).encode(), ""),
        ("/v1/completions", json.dumps({"prompt": "hello " * 600_000}).encode(), ""),
        ("/v1/chat/completions", json.dumps({**chat, "stop": ["s"] * 10_000}).encode(), ""),
        ("/v1/chat/completions", b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ""),
        ("/v1/chat/completions", json.dumps(chat).replace("4}", "NaN}").encode(), ""),
        ("/v1/chat/completions", json.dumps(chat).encode(), "text/plain"),
    ]


async def flood(client: httpx.AsyncClient, bodies: list, statuses: Counter, done) -> None:
    while not done.is_set():
        for path, body, content_type in bodies:
            headers = {"Content-Type": content_type or "application/json"}
            try:
                response = await client.post(path, content=body, headers=headers)
                statuses[response.status_code] += 1
            except httpx.TransportError:  # refused unread, the connection closed mid-body
                statuses["closed"] += 1


def _raw_head(url: str, length: int) -> bytes:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {url.removeprefix('http://')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _connect(url: str, receive_buffer: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((ABUSER_ADDRESS, 0))
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


async def never_read(url: str, max_tokens: int, done: asyncio.Event) -> None:
    """A stream whose socket is never read: the server's sends back up."""
    body = {
        "messages": [{"role": "user", "content": "tell me everything"}],
        "max_tokens": max_tokens * 4,
        "ignore_eos": True,
        "stream": True,
    }
    raw = json.dumps(body).encode()
    with _connect(url, receive_buffer=1024) as sock:
        await asyncio.get_running_loop().sock_sendall(sock, _raw_head(url, len(raw)) + raw)
        await done.wait()


async def slow_body(url: str, done: asyncio.Event) -> None:
    """A body that announces 1000 bytes and sends 10."""
    with _connect(url) as sock:
        await asyncio.get_running_loop().sock_sendall(sock, _raw_head(url, 1000) + b'{"messages')
        await done.wait()


async def abuse(url: str, max_tokens: int, done: asyncio.Event) -> Counter:
    """Every kind of abuser at once, until ``done``; what the floods got back."""
    statuses: Counter = Counter()
    transport = httpx.AsyncHTTPTransport(
        local_address=ABUSER_ADDRESS, limits=httpx.Limits(max_connections=NUM_FLOODERS)
    )
    async with httpx.AsyncClient(base_url=url, timeout=600, transport=transport) as client:
        # Past the default admission limit (64 running + 256 queued).
        bodies = abusive_bodies(512)
        abusers = [flood(client, bodies, statuses, done) for _ in range(NUM_FLOODERS)]
        abusers += [never_read(url, max_tokens, done) for _ in range(NUM_NEVER_READING)]
        abusers += [slow_body(url, done) for _ in range(NUM_SLOW_BODIES)]
        await asyncio.gather(*abusers)
    return statuses


def abuser_process(url: str, max_tokens: int, started, stop, results) -> None:
    async def main() -> Counter:
        done = asyncio.Event()
        task = asyncio.create_task(abuse(url, max_tokens, done))
        started.set()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        done.set()
        return await task

    results.put(dict(asyncio.run(main())))


async def normal_streams(url: str, num_requests: int, max_tokens: int):
    limits = httpx.Limits(max_connections=num_requests)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        results = await asyncio.gather(
            *(one_request(client, model, i, max_tokens) for i in range(num_requests))
        )
        return model, results


def run(url: str, num_requests: int, max_tokens: int, abuse: bool):
    """The normal streams' results, alone or with the abusers' process running."""
    if not abuse:
        return (*asyncio.run(normal_streams(url, num_requests, max_tokens)), Counter())
    context = multiprocessing.get_context("spawn")
    started, stop, results = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=abuser_process, args=(url, max_tokens, started, stop, results))
    process.start()
    started.wait()
    try:
        model, streams = asyncio.run(normal_streams(url, num_requests, max_tokens))
    finally:
        stop.set()
    statuses = Counter(results.get())
    process.join()
    return model, streams, statuses


def summary(results: list[Result]) -> tuple[float, float, int]:
    gaps = [gap for r in results if r.error is None for gap in r.gaps]
    errors = sum(r.error is not None for r in results)
    return percentile(gaps, 50) * 1e3, percentile(gaps, 99) * 1e3, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint for the server started here (default: demo)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    with serve(args.model, None) as url:
        model, quiet, _ = run(url, args.requests, args.max_tokens, abuse=False)
        _, abused, statuses = run(url, args.requests, args.max_tokens, abuse=True)
    quiet_p50, quiet_p99, quiet_errors = summary(quiet)
    abused_p50, abused_p99, abused_errors = summary(abused)
    print(f"model {model}; {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{args.requests} normal streams of {args.max_tokens} tokens\n")
    print("| run | ITL p50 | ITL p99 | normal streams failed |\n|---|---|---|---|")
    print(f"| alone | {quiet_p50:.1f} ms | {quiet_p99:.1f} ms | {quiet_errors} |")
    print(f"| with abuse | {abused_p50:.1f} ms | {abused_p99:.1f} ms | {abused_errors} |")
    print(f"\np99 ratio {abused_p99 / quiet_p99:.2f} (goal <= 1.5)")
    print("abusive requests answered: " + ", ".join(f"{n} x {s}" for s, n in statuses.items()))
    if quiet_errors or abused_errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
