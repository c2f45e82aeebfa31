"""``edgechat serve`` as a real process: environment variables, and SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from PIL import Image

from client.chat import image_data_url
from engine import LLM, SamplingParams
from server.cli import build_parser, engine_kwargs, main
from tests.server.gated_serve import GATE_FD_VARIABLE, ONE_STEP, OPEN

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECHAT_PORT", "9001")
    monkeypatch.setenv("EDGECHAT_API_KEY", "from-env")
    monkeypatch.setenv("EDGECHAT_MODEL", "/models/x")
    monkeypatch.setenv("EDGECHAT_KV_CACHE_MEMORY", "0.5")
    args = build_parser().parse_args(["serve"])
    assert (args.port, args.api_key, args.model, args.kv_cache_memory) == (
        9001,
        "from-env",
        "/models/x",
        0.5,
    )
    assert (args.host, args.max_queued_requests, args.served_model_name) == ("127.0.0.1", 256, None)
    args = build_parser().parse_args(["serve", "--port", "9002", "--api-key", "from-flag"])
    assert (args.port, args.api_key) == (9002, "from-flag")
    monkeypatch.setenv("EDGECHAT_PORT", "not-a-port")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])


def test_no_warmup_reaches_the_engine_config(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve"])
    assert engine_kwargs(args)["warm_up"] is True
    monkeypatch.setenv("EDGECHAT_NO_WARMUP", "1")
    assert engine_kwargs(build_parser().parse_args(["serve"]))["warm_up"] is False
    monkeypatch.delenv("EDGECHAT_NO_WARMUP")
    assert engine_kwargs(build_parser().parse_args(["serve", "--no-warmup"]))["warm_up"] is False


GENERATE = ["generate", "--prompt", "Hello", "--max-tokens", "4", "--kv-cache-memory", "0.05"]


@pytest.mark.parametrize("mode", ["--chat", "--raw"])
def test_generate_applies_the_chat_template_or_not(
    tiny_llama: Path, mode: str, capsys: pytest.CaptureFixture
) -> None:
    assert main([*GENERATE, "--model", str(tiny_llama), mode]) == 0
    out, err = capsys.readouterr()
    llm = LLM(str(tiny_llama), kv_cache_memory=0.05)
    greedy = SamplingParams(max_tokens=4, temperature=0)
    if mode == "--chat":
        expected = llm.chat([{"role": "user", "content": "Hello"}], greedy)
    else:
        [expected] = llm.generate("Hello", greedy)
    assert out == expected.text + "\n"
    assert re.search(r"\[4 tokens in [0-9.]+ s: [0-9.]+ tok/s, finish_reason length\]", err)


def test_generate_chats_by_default_with_a_template(
    tiny_llama: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([*GENERATE, "--model", str(tiny_llama)]) == 0
    by_default = capsys.readouterr().out
    assert main([*GENERATE, "--model", str(tiny_llama), "--chat"]) == 0
    assert capsys.readouterr().out == by_default


def test_generate_takes_images_on_a_vlm(
    tiny_llava: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    argv = [*GENERATE, "--model", str(tiny_llava), "--image", str(image)]
    assert main(argv) == 0
    llm = LLM(str(tiny_llava), kv_cache_memory=0.05)
    parts = [
        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
        {"type": "text", "text": "Hello"},
    ]
    expected = llm.chat([{"role": "user", "content": parts}], SamplingParams(4, temperature=0))
    assert capsys.readouterr().out == expected.text + "\n"
    assert main([*argv[:-1], str(tmp_path / "missing.png")]) == 2
    assert "cannot read the image" in capsys.readouterr().err


def test_generate_refuses_what_raw_text_cannot_take(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):  # the server's media options are not generate's
        build_parser().parse_args([*GENERATE, "--no-http-media"])
    with pytest.raises(SystemExit):
        build_parser().parse_args([*GENERATE, "--chat", "--raw"])
    assert main([*GENERATE, "--raw", "--system", "be brief"]) == 2
    assert "--chat" in capsys.readouterr().err


def test_log_level_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = build_parser().parse_args
    assert parse(["serve", "--log-level", "debug"]).log_level == "DEBUG"
    assert parse(["--log-level", "ERROR", "serve"]).log_level == "ERROR"
    assert parse(["chat"]).log_level is None
    monkeypatch.setenv("EDGECHAT_LOG_LEVEL", "warning")
    assert build_parser().parse_args(["serve"]).log_level == "WARNING"
    assert build_parser().parse_args(["serve", "--log-level", "INFO"]).log_level == "INFO"
    with pytest.raises(SystemExit):
        parse(["serve", "--log-level", "LOUD"])


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"edgechat {version('edgechat')}\n"


def test_bad_settings_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--max-queued-requests", "-1"]) == 2
    assert "max_queued_requests" in capsys.readouterr().err


@dataclass
class ServeProcess:
    """A running ``edgechat serve`` whose engine takes only the steps the test allows."""

    process: subprocess.Popen
    url: str
    log: list[str]
    gate: BinaryIO

    def allow_steps(self, num_steps: int) -> None:
        self.gate.write(ONE_STEP * num_steps)
        self.gate.flush()

    def open_gate(self) -> None:
        self.gate.write(OPEN)
        self.gate.flush()


@contextmanager
def serve_process(model: Path, *flags: str) -> Iterator[ServeProcess]:
    """``edgechat serve`` on a free port, its engine held at its first step."""
    gate_read, gate_write = os.pipe()
    env = {
        **os.environ,
        "EDGECHAT_MODEL": str(model),
        "EDGECHAT_KV_CACHE_MEMORY": "0.05",
        GATE_FD_VARIABLE: str(gate_read),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.server.gated_serve", "serve", "--port", "0", *flags],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(gate_read,),
    )
    os.close(gate_read)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stderr), daemon=True)
    reader.start()
    try:
        with os.fdopen(gate_write, "wb") as gate:
            url = None
            deadline = time.monotonic() + 90
            while url is None and time.monotonic() < deadline and process.poll() is None:
                for line in list(log):
                    if match := re.search(r"Uvicorn running on (http://\S+)", line):
                        url = match.group(1)
                time.sleep(0.05)
            assert url is not None, "".join(log)
            while httpx.get(f"{url}/health").status_code != 200:
                time.sleep(0.05)
            yield ServeProcess(process, url, log, gate)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def read_stream(url: str, body: dict, first_chunk: threading.Event) -> list[str]:
    """The data payloads of a streamed completion; sets ``first_chunk`` on the first."""
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
                first_chunk.set()
    return events


@contextmanager
def streaming_in_background(
    url: str, body: dict
) -> Iterator[tuple[list[list[str]], threading.Thread]]:
    """Yields once the stream has started: where its events will be, and its thread."""
    result: list[list[str]] = []
    first_chunk = threading.Event()
    thread = threading.Thread(target=lambda: result.append(read_stream(url, body, first_chunk)))
    thread.start()
    assert first_chunk.wait(timeout=90)
    yield result, thread
    thread.join()  # bounded by the test's timeout


def wait_until_refused(url: str, timeout: float = 90.0) -> None:
    """Until the server stops accepting connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health")
        except httpx.ConnectError:
            return
        time.sleep(0.02)
    raise AssertionError(f"the server still accepts connections {timeout} s after SIGTERM")


STREAM = {"prompt": "Go on", "max_tokens": 200, "ignore_eos": True, "stream": True}
# Steps let through before SIGTERM: enough for the first chunks, far from max_tokens.
NUM_STEPS_BEFORE_SIGTERM = 5


@pytest.mark.timeout(300)
def test_sigterm_lets_running_streams_finish_and_exits_0(tiny_model_factory) -> None:
    model = tiny_model_factory("llama", max_position_embeddings=2048)
    # NOTE: a grace period longer than the test's own timeout: the stream finishing, not
    # the machine's speed, decides how this test ends.
    with serve_process(model, "--shutdown-timeout", "3600") as server:
        server.allow_steps(NUM_STEPS_BEFORE_SIGTERM)
        with streaming_in_background(server.url, STREAM) as (result, stream):
            server.process.send_signal(signal.SIGTERM)
            # New connections are refused, while the stream (held at the gate) goes on.
            wait_until_refused(server.url)
            assert stream.is_alive()
            server.open_gate()
        assert server.process.wait() == 0, "".join(server.log)
    [events] = result
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # All of it came (fewer chunks than tokens: the detokenizer may hold a token back).
    assert len(chunks) - 1 >= 150


@pytest.mark.timeout(300)
def test_sigterm_aborts_streams_after_the_grace_period(tiny_model_factory) -> None:
    model = tiny_model_factory("llama", max_position_embeddings=2048)
    with serve_process(model, "--shutdown-timeout", "0") as server:
        server.allow_steps(NUM_STEPS_BEFORE_SIGTERM)
        # The gate stays shut: the stream can only end by being aborted.
        with streaming_in_background(server.url, STREAM) as (result, _):
            server.process.send_signal(signal.SIGTERM)
        assert server.process.wait() == 0, "".join(server.log)
    [events] = result
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["type"]) == ("shutting_down", "server_error")


@pytest.mark.timeout(120)
def test_a_model_that_cannot_load_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    process = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", "0", "--model", str(missing)],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert process.returncode == 2, process.stderr
    assert "cannot load the model" in process.stderr and str(missing) in process.stderr
