"""Bad input fails fast with a clear error, and no run leaves a partial checkpoint."""

from __future__ import annotations

import json

import pytest
import transformers

import engine.quant.quantizer as quantizer
from engine.errors import QuantizationError, UnsupportedModelError
from engine.quant.quantizer import QuantizeConfig, quantize
from tests.quant.conftest import GROUP_SIZE, calib_ids

SMALL = QuantizeConfig(group_size=GROUP_SIZE, num_samples=4, seq_len=64)


def assert_nothing_written(out_dir):
    assert not out_dir.exists()
    assert not list(out_dir.parent.glob(f".{out_dir.name}.*"))


def test_unsupported_architecture(tmp_path):
    model_dir = tmp_path / "gpt2"
    transformers.GPT2Config(
        n_layer=1, n_embd=64, n_head=2, architectures=["GPT2LMHeadModel"]
    ).save_pretrained(model_dir)
    with pytest.raises(UnsupportedModelError, match="cannot quantize architecture GPT2"):
        quantize(model_dir, tmp_path / "out", SMALL, calib_ids=calib_ids(4))
    assert_nothing_written(tmp_path / "out")


def test_already_quantized_model(outlier_llama, quantized_factory, tmp_path):
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize(quantized_factory(outlier_llama), tmp_path / "out", SMALL)
    assert_nothing_written(tmp_path / "out")


def test_group_size_must_divide_in_features(outlier_llama, tmp_path):
    config = QuantizeConfig(group_size=48, num_samples=4, seq_len=64)
    with pytest.raises(QuantizationError, match="group size 48 does not divide the 128"):
        quantize(outlier_llama, tmp_path / "out", config, calib_ids=calib_ids(4))
    assert_nothing_written(tmp_path / "out")


def test_too_little_calibration_text(outlier_llama, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("Only a sentence or two. Not nearly enough.")
    with pytest.raises(QuantizationError, match="calibration text has"):
        quantize(outlier_llama, tmp_path / "out", SMALL, calib_data=text)
    assert_nothing_written(tmp_path / "out")


def test_calibration_longer_than_the_context(outlier_llama, tmp_path):
    with pytest.raises(QuantizationError, match="exceed the model's context of 256"):
        quantize(outlier_llama, tmp_path / "out", SMALL, calib_ids=calib_ids(2, seq_len=300))


def test_output_dir_that_exists_or_cannot_be_made(outlier_llama, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.safetensors").write_text("precious")
    with pytest.raises(QuantizationError, match="already exists"):
        quantize(outlier_llama, taken, SMALL, calib_ids=calib_ids(4))
    assert (taken / "model.safetensors").read_text() == "precious"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(QuantizationError, match="cannot create the output directory"):
        quantize(outlier_llama, blocker / "out", SMALL, calib_ids=calib_ids(4))


@pytest.mark.parametrize("bad", [dict(method="gptq"), dict(group_size=0), dict(seq_len=1)])
def test_bad_options(bad):
    with pytest.raises(QuantizationError):
        QuantizeConfig(**bad)


@pytest.mark.parametrize("method", ["awq", "rtn"])
def test_interrupted_run_leaves_nothing_behind(outlier_llama, tmp_path, monkeypatch, method):
    real = quantizer._layer_tensors
    calls = []

    def interrupt_on_second_layer(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(quantizer, "_layer_tensors", interrupt_on_second_layer)
    config = QuantizeConfig(method=method, group_size=GROUP_SIZE, num_samples=4, seq_len=64)
    with pytest.raises(KeyboardInterrupt):
        quantize(outlier_llama, tmp_path / "out", config, calib_ids=calib_ids(4))
    assert_nothing_written(tmp_path / "out")


def test_an_empty_output_dir_is_filled(outlier_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    config = QuantizeConfig(method="rtn", group_size=GROUP_SIZE)
    quantize(outlier_llama, out, config)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 4
