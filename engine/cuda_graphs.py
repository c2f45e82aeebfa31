"""CUDA graphs for decode steps: at batch 1 a step is hundreds of small kernels, and on a
fast GPU launching them costs more than running them. Each captured batch size replays
the whole forward and the LM head, reading the runner's persistent input buffer where a
step of that size is staged (``StepInputs``, at ``decode_layout(size)``); a smaller
batch is padded up to the next captured size with inert rows (``pad_decode_rows``),
whose logits are dropped.
"""

from __future__ import annotations

import bisect
import logging
import time

import torch
from torch import nn

from engine.step_inputs import StepInputs, StepLayout, pad_decode_rows

logger = logging.getLogger(__name__)


def capture_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, ... up to ``max_batch_size``, which is always included."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return [*sizes, max_batch_size]


class DecodeGraphs:
    """Captures at construction; ``replay`` runs the graph of ``padded_size`` over the
    step staged (and uploaded) at ``decode_layout`` of that size."""

    def __init__(
        self, model: nn.Module, inputs: StepInputs, max_batch_size: int, max_blocks_per_seq: int
    ):
        self.sizes = capture_sizes(max_batch_size)
        self.inputs = inputs
        self.max_blocks_per_seq = max_blocks_per_seq
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # [size, vocab], written by each replay
        start = time.perf_counter()
        pool = None
        for size in reversed(self.sizes):  # largest first: smaller ones reuse its memory
            self.graphs[size], self.logits[size] = self._capture(model, size, pool)
            pool = self.graphs[size].pool()
        logger.info(
            "captured CUDA graphs for decode batches %s in %.1f s",
            self.sizes,
            time.perf_counter() - start,
        )

    @property
    def max_batch_size(self) -> int:
        return self.sizes[-1]

    def padded_size(self, num_seqs: int) -> int:
        """The captured size a decode batch of ``num_seqs`` (<= max_batch_size) runs at."""
        return self.sizes[bisect.bisect_left(self.sizes, num_seqs)]

    def decode_layout(self, size: int) -> StepLayout:
        """One token per sequence; block tables full width, the same for every step."""
        return StepLayout(num_tokens=size, num_seqs=size, width=self.max_blocks_per_seq)

    @torch.inference_mode()
    def _capture(
        self, model: nn.Module, size: int, pool
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        layout = self.decode_layout(size)
        pad_decode_rows(self.inputs.stage(layout), 0)
        self.inputs.upload()
        inputs = self.inputs.device_arrays(layout)
        meta = inputs.attention_metadata()

        def step() -> torch.Tensor:
            hidden = model(inputs.input_ids, inputs.positions, meta)
            return model.compute_logits(hidden)

        step()  # outside the capture: compiles the Triton kernels, warms the allocator
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = step()
        return graph, logits

    def replay(self, num_seqs: int) -> torch.Tensor:  # [num_seqs, vocab] fp32, a fresh tensor
        """Run the decode step staged at ``decode_layout(padded_size(num_seqs))``: its
        first ``num_seqs`` rows real, the others inert."""
        size = self.padded_size(num_seqs)
        self.graphs[size].replay()
        # A copy: the next replay overwrites the graph's output.
        return self.logits[size][:num_seqs].to(torch.float32, copy=True)
