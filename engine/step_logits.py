"""What a model step hands the sampler: the logits of the rows that sample and, when the
step computed it (a CUDA graph replay), each row's argmax already on its way to the host.

A decode step whose requests are all greedy and need nothing else of the logits
(no penalty, bias, grammar or logprobs) then takes those ids: the argmax ran inside the
graph and its ids come back in one non_blocking copy into pinned memory, so the step
launches nothing after the replay and waits once, on that copy."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class HostTokenIds:
    """A device's token ids copied into host memory (pinned on CUDA) without blocking;
    ``receive`` waits for the copy. One buffer, rewritten by each ``send``."""

    def __init__(self, max_rows: int, device: torch.device):
        self.is_cuda = device.type == "cuda"
        self._host = torch.empty(max_rows, dtype=torch.int64, pin_memory=self.is_cuda)
        self._copied = torch.cuda.Event() if self.is_cuda else None
        self._num_rows = 0

    def send(self, token_ids: torch.Tensor) -> None:
        """Queue the copy of ``token_ids`` [rows] (int64, on the device)."""
        self._num_rows = len(token_ids)
        self._host[: self._num_rows].copy_(token_ids, non_blocking=self.is_cuda)
        if self._copied is not None:
            self._copied.record()

    def receive(self) -> list[int]:
        """The ids of the last ``send``, once they have arrived."""
        if self._copied is not None:
            self._copied.synchronize()
        return self._host[: self._num_rows].tolist()


@dataclass(frozen=True)
class StepLogits:
    """``logits`` [rows, vocab], one row per sequence that samples this step, in the
    batch's sampling order: fp32 from an eager step; a graph's own output (the model's
    dtype) from a replay, valid until the next replay overwrites it. ``argmax``, where
    the step computed it, holds each row's argmax of these logits."""

    logits: torch.Tensor
    argmax: HostTokenIds | None = None
