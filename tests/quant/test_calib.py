"""Calibration data: text files, .jsonl, directories, the Hub set's offline error."""

from __future__ import annotations

import json

import huggingface_hub
import pytest

from engine.errors import QuantizationError
from engine.quant.calib import calibration_ids, pile_texts, read_texts
from engine.tokenizer import load_tokenizer

DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 8,
    "Pack my box with five dozen liquor jugs! " * 8,
    "How vexingly quick daft zebras jump. " * 8,
]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return load_tokenizer(tiny_llama)


def expected_ids(tokenizer, docs: list[str], count: int) -> list[int]:
    ids = [token for doc in docs for token in tokenizer(doc).input_ids]
    return ids[:count]


def test_text_file_is_one_document(tmp_path, tokenizer):
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(DOCS))
    ids = calibration_ids(tokenizer, read_texts(path), num_samples=3, seq_len=16)
    assert ids.shape == (3, 16)
    assert ids.flatten().tolist() == expected_ids(tokenizer, ["\n\n".join(DOCS)], 48)


def test_jsonl_takes_each_lines_text_field(tmp_path, tokenizer):
    path = tmp_path / "calib.jsonl"
    lines = [json.dumps({"text": doc, "meta": {"source": "test"}}) for doc in DOCS]
    path.write_text("\n".join(lines) + "\n\n")
    ids = calibration_ids(tokenizer, read_texts(path), num_samples=4, seq_len=32)
    assert ids.flatten().tolist() == expected_ids(tokenizer, DOCS, 128)


def test_directory_reads_txt_and_md_files_by_name(tmp_path, tokenizer):
    for name, doc in zip(["b.md", "a.txt", "c.txt"], DOCS):
        (tmp_path / name).write_text(doc)
    (tmp_path / "ignored.json").write_text("{}")
    texts = list(read_texts(tmp_path))
    assert texts == [DOCS[1], DOCS[0], DOCS[2]]


def test_too_little_text_says_how_much_is_needed(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("Just a few words.")
    with pytest.raises(QuantizationError, match=r"need 65536.*--num-samples"):
        calibration_ids(tokenizer, read_texts(path), num_samples=128, seq_len=512)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    with pytest.raises(QuantizationError, match="line 2"):
        list(read_texts(path))


def test_missing_data_and_empty_directory(tmp_path):
    with pytest.raises(QuantizationError, match="does not exist"):
        list(read_texts(tmp_path / "nope.txt"))
    with pytest.raises(QuantizationError, match="no .txt or .md"):
        list(read_texts(tmp_path))


def test_hub_set_offline_says_to_pass_calib_data(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(QuantizationError, match="offline.*--calib-data"):
        next(pile_texts())
