"""Writing a checkpoint so that it only ever appears complete.

Shards go into a hidden temporary sibling of the output directory as they fill; the
last step renames that directory into place. Leaving the writer without committing (an
error, Ctrl-C) deletes it, so an interrupted run leaves nothing under the output path.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.errors import QuantizationError

# Pending tensors are written out once they pass this size: bounds the writer's memory.
MAX_SHARD_BYTES = 1 << 30
# Tokenizer, chat template and generation settings: everything small but the weights.
COPIED_PATTERNS = ("*.json", "*.jinja", "tokenizer*", "*.txt", "*.model", "*.tiktoken")
NOT_COPIED = ("config.json", "quant_config.json", "*.index.json")


def check_output_dir(out_dir: Path) -> Path:
    """``out_dir`` as an absolute path, if a checkpoint may be written there."""
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise QuantizationError(f"{out_dir} already exists; remove it or choose another output")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QuantizationError(f"cannot create the output directory {out_dir}: {e}") from None
    return out_dir


class CheckpointWriter:
    """``with CheckpointWriter(out) as writer: writer.add(...); writer.commit(...)``."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = MAX_SHARD_BYTES):
        self.out_dir = check_output_dir(out_dir)
        self.max_shard_bytes = max_shard_bytes
        try:
            self.staging = Path(
                tempfile.mkdtemp(
                    prefix=f".{self.out_dir.name}.", suffix=".partial", dir=self.out_dir.parent
                )
            )
        except OSError as e:
            raise QuantizationError(f"cannot write to {self.out_dir.parent}: {e}") from None
        self.pending: dict[str, torch.Tensor] = {}
        self.shards: list[list[str]] = []  # tensor names of each written shard
        self.total_bytes = 0
        self.committed = False

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    @property
    def num_pending_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.pending.values())

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            self.pending[name] = tensor.detach().to("cpu").contiguous()
        if self.num_pending_bytes >= self.max_shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        self.total_bytes += self.num_pending_bytes
        save_file(self.pending, self._shard_path(len(self.shards)), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending = {}

    def _shard_path(self, index: int) -> Path:
        return self.staging / f"shard-{index}.safetensors"

    def commit(self, config: dict, source_dir: Path) -> Path:
        """Write the last shard, the shard index, ``config`` as config.json and the source
        checkpoint's tokenizer files; then move the checkpoint into place."""
        self._flush()
        self._name_shards()
        for path in sorted(Path(source_dir).iterdir()):
            copied = any(fnmatch.fnmatch(path.name, p) for p in COPIED_PATTERNS)
            skipped = any(fnmatch.fnmatch(path.name, p) for p in NOT_COPIED)
            if path.is_file() and copied and not skipped:
                shutil.copy2(path, self.staging / path.name)
        _write_json(self.staging / "config.json", config)
        try:
            os.rename(self.staging, self.out_dir)
        except OSError as e:
            raise QuantizationError(f"cannot move the checkpoint to {self.out_dir}: {e}") from None
        self.committed = True
        return self.out_dir

    def _name_shards(self) -> None:
        """Hugging Face names: model.safetensors alone, else numbered shards and an index."""
        if len(self.shards) == 1:
            os.rename(self._shard_path(0), self.staging / "model.safetensors")
            return
        weight_map = {}
        for index, names in enumerate(self.shards):
            final = f"model-{index + 1:05d}-of-{len(self.shards):05d}.safetensors"
            os.rename(self._shard_path(index), self.staging / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        _write_json(self.staging / "model.safetensors.index.json", index)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
