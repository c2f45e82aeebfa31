"""Perplexity: the engine and transformers agree; windows are cut as documented."""

from __future__ import annotations

import pytest

from engine.errors import EngineError
from engine.quant.perplexity import perplexity, windows

TEXT = "Once upon a time, a small model learned to count tokens one by one. " * 40


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_engine_and_transformers_agree_on_a_dense_model(tiny_model_factory, text_file, arch):
    model = str(tiny_model_factory(arch))
    ours = perplexity(model, text_file, seq_len=100, backend="engine")
    theirs = perplexity(model, text_file, seq_len=100, backend="transformers")
    assert ours.num_tokens == theirs.num_tokens > 100
    assert ours.value == pytest.approx(theirs.value, rel=1e-5)


def test_max_tokens_caps_what_is_scored(tiny_llama, text_file):
    result = perplexity(str(tiny_llama), text_file, seq_len=64, max_tokens=100)
    assert result.num_tokens == 63 + 35  # windows of 64 and 36 tokens
    assert 1 < result.value < 1e6


def test_windows_drop_a_single_token_tail():
    assert windows(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows(list(range(10)), 4, max_tokens=6) == [[0, 1, 2, 3], [4, 5]]


def test_bad_arguments(tiny_llama, text_file, tmp_path):
    with pytest.raises(EngineError, match="exceeds the model's context of 256"):
        perplexity(str(tiny_llama), text_file, seq_len=2048)
    with pytest.raises(EngineError, match="cannot read"):
        perplexity(str(tiny_llama), tmp_path / "missing.txt", seq_len=64)
    with pytest.raises(EngineError, match="backend"):
        perplexity(str(tiny_llama), text_file, seq_len=64, backend="vllm")
