"""Reading safetensors checkpoints one tensor at a time, straight into their destination.

We parse the (simple) safetensors header ourselves and ``readinto`` each tensor's bytes,
rather than memory-mapping the file: pages of a mapping stay resident (and counted in
RSS) until it is closed, so mapping a whole shard would briefly hold the weights twice —
which a Jetson, whose GPU shares the RAM, cannot afford. Peak memory is the model plus
the largest single tensor (``read_rows`` reads part of one: the CPU load quantizes an
embedding a few rows at a time). The header is checked against the file size, so a
truncated or corrupt file fails with a clear error before anything is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from engine.errors import ModelLoadError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    path: Path
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    num_bytes: int


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors of one safetensors file, validated against its size."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ModelLoadError(f"{path} is not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(MAX_HEADER_BYTES, file_size - 8):
            raise ModelLoadError(f"{path} is corrupt or truncated (bad header length)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{path} is corrupt (unreadable header: {e})") from None
    data_start = 8 + header_len
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries.append(_entry(path, name, info, data_start, file_size))
    return entries


def _entry(path: Path, name: str, info, data_start: int, file_size: int) -> TensorEntry:
    try:
        dtype = DTYPES[info["dtype"]]
        shape = tuple(int(n) for n in info["shape"])
        begin, end = (int(n) for n in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"{path} is corrupt (bad entry for tensor {name!r})") from None
    num_bytes = dtype.itemsize * _numel(shape)
    if end - begin != num_bytes or begin < 0:
        raise ModelLoadError(f"{path} is corrupt (tensor {name!r} has inconsistent offsets)")
    if data_start + end > file_size:
        raise ModelLoadError(
            f"{path} is truncated: tensor {name!r} ends at byte {data_start + end} "
            f"but the file has {file_size}"
        )
    return TensorEntry(path, name, dtype, shape, data_start + begin, num_bytes)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the sharded index's files, or the single file."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index} is corrupt: {e}") from None
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ModelLoadError(f"{model_dir} lacks shards listed in its index: {missing}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no .safetensors weights found in {model_dir}")
    return files


# VILA saves each part of the model as a checkpoint of its own, in these subfolders.
SPLIT_PARTS = ("llm", "vision_tower", "mm_projector")


def is_split_checkpoint(model_dir: Path) -> bool:
    return (model_dir / "llm" / "config.json").exists()


def checkpoint_entries(model_dir: Path, with_language_model: bool = True) -> list[TensorEntry]:
    """Every safetensors tensor of a checkpoint (without the language model's when its
    weights come from elsewhere, e.g. a TinyChat ``.pt``). Those of a checkpoint split
    into ``SPLIT_PARTS`` are named ``<part>.<name within the part>``."""
    if not is_split_checkpoint(model_dir):
        if not with_language_model:
            return []
        return [entry for path in checkpoint_files(model_dir) for entry in read_header(path)]
    return [
        dataclasses.replace(entry, name=f"{part}.{entry.name}")
        for part in SPLIT_PARTS
        if with_language_model or part != "llm"
        for path in checkpoint_files(model_dir / part)
        for entry in read_header(path)
    ]


def load_into(
    entries: list[TensorEntry], target_for: Callable[[TensorEntry], torch.Tensor | None]
) -> None:
    """Copy every tensor into ``target_for(entry)`` (skipped when it returns None), in
    file order (see ``CheckpointReader.read_into``)."""
    with CheckpointReader() as reader:
        for entry in sorted(entries, key=file_order):
            target = target_for(entry)
            if target is not None:
                reader.read_into(entry, target)


def check_shape(name: str, shape: tuple[int, ...], expected: torch.Size) -> None:
    if tuple(shape) != tuple(expected):
        raise ModelLoadError(
            f"checkpoint tensor {name!r} has shape {tuple(shape)}, "
            f"the model expects {tuple(expected)}"
        )


def file_order(entry: TensorEntry) -> tuple[str, int]:
    return str(entry.path), entry.offset


class CheckpointReader:
    """Reads tensors, or row ranges of them, in any order from the files it opens (each
    once, unbuffered; all closed on exit), never through a memory map."""

    def __init__(self):
        self._files: dict[Path, BinaryIO] = {}
        self._open_files = contextlib.ExitStack()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self._open_files.close()
        self._files.clear()

    def read_into(self, entry: TensorEntry, target: torch.Tensor) -> None:
        """A contiguous CPU target of the entry's dtype is read into directly; anything
        else goes through one temporary tensor."""
        check_shape(entry.name, entry.shape, target.shape)
        direct = (
            target.device.type == "cpu" and target.dtype == entry.dtype and target.is_contiguous()
        )
        if direct:
            self._read(entry, target, entry.offset)
        else:
            target.copy_(self.read(entry))

    def read(self, entry: TensorEntry) -> torch.Tensor:
        tensor = torch.empty(entry.shape, dtype=entry.dtype)
        self._read(entry, tensor, entry.offset)
        return tensor

    def read_rows(self, entry: TensorEntry, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the entry's first dimension."""
        tensor = torch.empty((stop - start, *entry.shape[1:]), dtype=entry.dtype)
        row_bytes = entry.num_bytes // entry.shape[0]
        self._read(entry, tensor, entry.offset + start * row_bytes)
        return tensor

    def _read(self, entry: TensorEntry, out: torch.Tensor, offset: int) -> None:
        f = self._files.get(entry.path)
        if f is None:
            f = open(entry.path, "rb", buffering=0)  # noqa: SIM115 (closed on exit)
            self._files[entry.path] = self._open_files.enter_context(f)
        buffer = memoryview(out.view(-1).view(torch.uint8).numpy())
        f.seek(offset)
        num_read = 0
        while num_read < len(buffer):  # one read() returns at most ~2 GiB on Linux
            n = f.readinto(buffer[num_read:])
            if not n:
                raise ModelLoadError(f"{entry.path} is truncated while reading {entry.name!r}")
            num_read += n
