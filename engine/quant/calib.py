"""Calibration data: text from the user's files or the usual public set, as token ids.

AWQ only needs activations that look like the model's real inputs: a few hundred
thousand tokens of ordinary text. The usual set is the validation split of the Pile
(mit-han-lab/pile-val-backup), which we fetch as its one file, without ``datasets``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from engine.errors import QuantizationError

PILE_REPO = "mit-han-lab/pile-val-backup"
PILE_FILE = "val.jsonl.zst"
TEXT_SUFFIXES = (".txt", ".md")
CALIB_DATA_HINT = (
    'pass your own text with --calib-data (a text file, a .jsonl file with a "text" '
    "field, or a directory of .txt/.md files)"
)


def read_texts(path: Path) -> Iterator[str]:
    """The documents in ``path``: a text file (one document), a .jsonl file (each
    line's ``text``), or a directory of .txt/.md files (one document each, by name)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise QuantizationError(f"the calibration directory {path} has no .txt or .md files")
        for file in files:
            yield _read_text(file)
    elif path.is_file() and path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            yield from _jsonl_texts(f, str(path))
    elif path.is_file():
        yield _read_text(path)
    else:
        raise QuantizationError(f"calibration data {path} does not exist")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QuantizationError(f"cannot read calibration text {path}: {e}") from None


def _jsonl_texts(lines: Iterable[str], source: str) -> Iterator[str]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuantizationError(f"{source}, line {number}: not JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise QuantizationError(f'{source}, line {number}: no string "text" field')
        yield record["text"]


def pile_texts() -> Iterator[str]:
    """The documents of the Pile's validation split, fetched from the Hub once (cached)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(PILE_REPO, PILE_FILE, repo_type="dataset")
    except LocalEntryNotFoundError:
        raise QuantizationError(
            f"the default calibration set ({PILE_REPO}) is not in the local Hugging Face "
            f"cache and the Hub cannot be reached (offline?); {CALIB_DATA_HINT}"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise QuantizationError(f"cannot fetch {PILE_REPO}: {e}; {CALIB_DATA_HINT}") from None
    try:
        import zstandard
    except ImportError:
        raise QuantizationError(
            f"reading {PILE_FILE} needs the zstandard package (pip install zstandard); "
            f"or {CALIB_DATA_HINT}"
        ) from None
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
        yield from _jsonl_texts(io.TextIOWrapper(reader, encoding="utf-8"), PILE_FILE)


def calibration_ids(
    tokenizer,
    texts: Iterable[str],
    num_samples: int,
    seq_len: int,
    max_document_tokens: int | None = None,
) -> torch.Tensor:
    """``num_samples`` windows of ``seq_len`` tokens, [num_samples, seq_len], cut from the
    documents' tokens laid end to end (each tokenized as the model would see it, so with
    BOS where the tokenizer adds one). Documents longer than ``max_document_tokens`` are
    skipped (AutoAWQ's way to keep the Pile's mix diverse). Reads no more than needed."""
    needed = num_samples * seq_len
    ids: list[int] = []
    for text in texts:
        if not text.strip():
            continue
        document = tokenizer(text, verbose=False).input_ids
        if max_document_tokens is not None and len(document) > max_document_tokens:
            continue
        ids += document
        if len(ids) >= needed:
            return torch.tensor(ids[:needed], dtype=torch.int64).reshape(num_samples, seq_len)
    raise QuantizationError(
        f"the calibration text has {len(ids)} tokens, but {num_samples} samples of "
        f"{seq_len} tokens need {needed}: give more text or lower --num-samples / --seq-len"
    )
