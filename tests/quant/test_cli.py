"""``edgechat quantize`` and ``edgechat eval-ppl`` through their argument parsers."""

from __future__ import annotations

import argparse
import json
import os
import signal

import pytest

import engine.quant.quantizer as quantizer
from server.cli_quant import add_quant_commands
from tests.quant.conftest import GROUP_SIZE


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgechat")
    add_quant_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("A calibration corpus, plain prose about nothing in particular. " * 200)
    return path


def test_quantize_then_eval_ppl(outlier_llama, tmp_path, corpus, capsys):
    out = tmp_path / "awq"
    argv = ["quantize", "--model", str(outlier_llama), "--out", str(out)]
    argv += ["--group-size", str(GROUP_SIZE), "--calib-data", str(corpus)]
    argv += ["--num-samples", "4", "--seq-len", "64", "--no-clip", "--device", "cpu"]
    assert run(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["quantization_config"]["version"] == "gemm"

    argv = ["eval-ppl", "--model", str(out), "--data", str(corpus), "--seq-len", "128"]
    assert run(argv + ["--max-tokens", "300"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_rtn_needs_no_calibration_data(outlier_llama, tmp_path):
    out = tmp_path / "rtn"
    argv = ["quantize", "--model", str(outlier_llama), "--out", str(out), "--method", "rtn"]
    assert run(argv + ["--group-size", "64"]) == 0
    assert (out / "model.safetensors").exists()


def test_sigterm_mid_run_leaves_nothing_behind(outlier_llama, tmp_path, monkeypatch, capsys):
    real = quantizer._layer_tensors

    def terminated(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(quantizer, "_layer_tensors", terminated)
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    argv = ["quantize", "--model", str(outlier_llama), "--out", str(out), "--method", "rtn"]
    assert run(argv + ["--group-size", "32"]) == 130
    assert "no checkpoint was written" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert signal.getsignal(signal.SIGTERM) is handler


def test_defaults_are_the_usual_awq_settings():
    parser = argparse.ArgumentParser()
    add_quant_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["quantize", "--model", "m", "--out", "o"])
    assert (args.method, args.group_size, args.num_samples, args.seq_len, args.clip) == (
        "awq",
        128,
        128,
        512,
        True,
    )
    assert parser.parse_args(["eval-ppl", "--model", "m", "--data", "d"]).seq_len == 2048


def test_quantize_help_shows_every_default_and_how_long_awq_takes(capsys):
    parser = argparse.ArgumentParser(prog="edgechat")
    add_quant_commands(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["quantize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: awq)", "(default: 128)", "(default: 512)", "(default: auto)"):
        assert default in text
    assert "How long AWQ takes" in text and "(measured)" in text
