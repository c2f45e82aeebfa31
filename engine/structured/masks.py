"""Token masks for a batch's constrained rows: filled while the model runs, applied to
those rows' logits inside the sampler.

A batch without constrained rows does none of this (``MaskFiller.fill`` returns None).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from engine.structured.matcher import GrammarMatcher


class ConstrainedRequest(Protocol):
    """What the mask filler reads from a request; the engine's sequences satisfy it."""

    grammar: GrammarMatcher | None


@dataclass(frozen=True)
class TokenMasks:
    """``bitmask[j]`` holds the tokens row ``rows[j]`` of the batch may take next: bit
    ``t % 32`` of word ``t // 32`` is set when token ``t`` is allowed."""

    rows: list[int]
    bitmask: torch.Tensor  # [len(rows), num_words] int32, on the CPU

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [batch, vocab] with every disallowed token of the masked rows at
        -inf (out of place: the caller's tensor is left as it was)."""
        vocab_size = logits.shape[-1]
        assert self.bitmask.shape[1] * 32 >= vocab_size, "a mask narrower than the vocabulary"
        if logits.device.type == "cpu":
            allowed = unpack_on_host(self.bitmask, vocab_size)
        else:
            words = self.bitmask.to(logits.device, non_blocking=True)
            allowed = unpack_on_device(words, vocab_size)
        if len(self.rows) == logits.shape[0]:
            return torch.where(allowed, logits, float("-inf"))
        rows = torch.tensor(self.rows, device=logits.device)
        masked = logits.clone()
        masked[rows] = torch.where(allowed, logits[rows], float("-inf"))
        return masked


def unpack_on_host(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, words] int32 bitmask (CPU) -> [rows, vocab_size] bool, token t allowed at t.
    numpy's unpackbits does it in one pass, where torch takes three ops (and on a CPU
    each op costs more to dispatch than to compute)."""
    # NOTE: little-endian words (x86_64, aarch64): byte b of word w holds tokens
    # 32w + 8b .. 32w + 8b + 7, lowest bit first, which is unpackbits' "little" order.
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, bitorder="little")
    return torch.from_numpy(bits[:, :vocab_size].view(np.bool_))


def unpack_on_device(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``unpack_on_host`` in torch ops, for a bitmask already on the logits' device."""
    allowed = (words.unsqueeze(-1) & _bits(words.device)) != 0  # [rows, words, 32]
    return allowed.view(words.shape[0], -1)[:, :vocab_size]


@functools.cache
def _bits(device: torch.device) -> torch.Tensor:
    """[32] int32: bit i set in element i (bit 31 is the sign bit, -2**31)."""
    return torch.tensor(
        [1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int32, device=device
    )


class MaskFiller:
    """Fills the masks of a batch's constrained rows on the engine thread.

    Called after the runner has queued the model's forward pass and before the sampler
    waits for its logits: on a GPU the masks are computed while the model runs. (A
    worker thread would overlap them on a CPU too, but contends for the GIL and the
    cores with torch's own threads and slows the forward pass more than it saves.)
    """

    def __init__(self, device: torch.device | str = "cpu"):
        # Pinned on a GPU, so the copy to the device does not wait for the host.
        self._pin = torch.device(device).type == "cuda"

    def fill(self, requests: Sequence[ConstrainedRequest]) -> TokenMasks | None:
        """The masks of ``requests`` that have a grammar; None (and no work) if none has."""
        rows = [i for i, request in enumerate(requests) if request.grammar is not None]
        if not rows:
            return None
        grammars = [requests[i].grammar for i in rows]
        shape = (len(rows), grammars[0].num_mask_words)
        bitmask = torch.empty(shape, dtype=torch.int32, pin_memory=self._pin)
        row_bytes = bitmask.stride(0) * bitmask.element_size()
        for row, grammar in enumerate(grammars):
            grammar.write_mask(bitmask.data_ptr() + row * row_bytes)
        return TokenMasks(rows, bitmask)
