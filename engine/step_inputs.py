"""Persistent buffers for a step's model inputs: a host staging area (pinned on CUDA)
that each step fills through numpy views, and a device buffer it reaches in one
non_blocking copy of exactly the bytes in use.

Both are one byte buffer holding a step's arrays back to back (``StepLayout``): the
layout depends only on the step's sizes, so a CUDA graph captured for a batch size
reads the same addresses every time a step of that size is staged. On CPU the staging
area is the device buffer itself and nothing is copied."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from engine.layers.attention import AttentionMetadata

A = TypeVar("A", np.ndarray, torch.Tensor)

_INT64, _INT32 = 8, 4


@dataclass(frozen=True)
class StepLayout:
    """A step's sizes: ``num_tokens`` new tokens over ``num_seqs`` sequences whose block
    tables are ``width`` columns wide."""

    num_tokens: int
    num_seqs: int
    width: int

    def arrays(self) -> list[tuple[str, int, tuple[int, ...]]]:
        """(name, element bytes, shape) in buffer order: int64 first, so every offset
        stays a multiple of its element size."""
        t, s = self.num_tokens, self.num_seqs
        return [
            ("input_ids", _INT64, (t,)),
            ("positions", _INT64, (t,)),
            ("slot_mapping", _INT64, (t,)),
            ("sample_rows", _INT64, (s,)),
            ("seq_lens", _INT32, (s,)),
            ("query_start_loc", _INT32, (s + 1,)),
            ("block_tables", _INT32, (s, self.width)),
        ]

    @property
    def num_bytes(self) -> int:
        return sum(size * math.prod(shape) for _, size, shape in self.arrays())


@dataclass(frozen=True)
class StepArrays(Generic[A]):
    input_ids: A  # [num_tokens] int64
    positions: A  # [num_tokens] int64
    slot_mapping: A  # [num_tokens] int64
    sample_rows: A  # [num_seqs] int64: the flat rows whose logits are sampled
    seq_lens: A  # [num_seqs] int32: context length after the step
    query_start_loc: A  # [num_seqs + 1] int32
    block_tables: A  # [num_seqs, width] int32

    def attention_metadata(
        self, host_lens: tuple[list[int], list[int]] | None = None, negative_slots: bool = True
    ) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping,
            block_tables=self.block_tables,
            seq_lens=self.seq_lens,
            query_start_loc=self.query_start_loc,
            host_lens=host_lens,
            negative_slots=negative_slots,
        )


class StepInputs:
    """``stage`` hands out the host arrays of a layout to fill; ``upload`` sends them;
    ``device_arrays`` are what the model reads."""

    def __init__(self, capacity: StepLayout, device: torch.device):
        self.capacity = -(-capacity.num_bytes // _INT64) * _INT64
        self.device = device
        self.is_cuda = device.type == "cuda"
        self._staging = torch.zeros(self.capacity, dtype=torch.uint8, pin_memory=self.is_cuda)
        self._on_device = self._staging.to(device) if self.is_cuda else self._staging
        # The buffers seen as each element type once, so carving a step is plain slicing.
        staging = self._staging.numpy()
        self._host_typed = {_INT64: staging.view(np.int64), _INT32: staging.view(np.int32)}
        on_device = self._on_device
        self._device_typed = {
            _INT64: on_device.view(torch.int64),
            _INT32: on_device.view(torch.int32),
        }
        self._copied = torch.cuda.Event() if self.is_cuda else None
        self._staged_bytes = 0

    def stage(self, layout: StepLayout) -> StepArrays[np.ndarray]:
        """The host arrays of ``layout``, to fill. Waits for the last upload to have read
        them (a step that samples has synchronized already; a prefill-only one has not)."""
        assert layout.num_bytes <= self.capacity, f"{layout} exceeds the buffers' capacity"
        if self._copied is not None:
            self._copied.synchronize()
        self._staged_bytes = layout.num_bytes
        return _carve(self._host_typed, layout)

    def upload(self) -> None:
        """Copy the staged arrays to the device in one non_blocking copy (no-op on CPU)."""
        if not self.is_cuda:
            return
        end = self._staged_bytes
        self._on_device[:end].copy_(self._staging[:end], non_blocking=True)
        self._copied.record()

    def device_arrays(self, layout: StepLayout) -> StepArrays[torch.Tensor]:
        """Views of the device buffer where ``layout``'s arrays land."""
        return _carve(self._device_typed, layout)


def _carve(typed: dict[int, A], layout: StepLayout) -> StepArrays[A]:
    """Views of ``layout``'s arrays in one buffer, given as each element size's view."""
    views, offset = {}, 0  # offset in bytes
    for name, size, shape in layout.arrays():
        count = math.prod(shape)
        start = offset // size
        view = typed[size][start : start + count]
        views[name] = view.reshape(shape) if len(shape) > 1 else view
        offset += size * count
    return StepArrays(**views)


def pad_decode_rows(host: StepArrays[np.ndarray], start: int) -> None:
    """Make decode rows ``start:`` inert for a padded graph replay: slot -1 (the KV write
    skips it), context length 1 over block 0, one query each; their logits are dropped."""
    host.input_ids[start:] = 0
    host.positions[start:] = 0
    host.slot_mapping[start:] = -1
    host.seq_lens[start:] = 1
    host.query_start_loc[start:] = np.arange(start, len(host.query_start_loc))
    host.block_tables[start:, 0] = 0
