"""CUDA graphs for decode steps: at batch 1 a step is hundreds of small kernels, and on a
fast GPU launching them costs more than running them. Each captured batch size replays
the whole forward and the LM head, reading the runner's persistent input buffer where a
step of that size is staged (``StepInputs``, at ``decode_layout(size)``); a smaller
batch is padded up to the next captured size with inert rows (``pad_decode_rows``),
whose logits are dropped. Each graph also takes the argmax of every row, which a greedy
batch samples from without touching the logits (``engine/step_logits.py``).
"""

from __future__ import annotations

import bisect
import logging
import time

import torch
from torch import nn

from engine.step_inputs import StepInputs, StepLayout, pad_decode_rows
from engine.step_logits import HostTokenIds, StepLogits

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
        # [size, vocab] in the model's dtype and [size] int64, written by each replay.
        self.logits: dict[int, torch.Tensor] = {}
        self.argmax: dict[int, torch.Tensor] = {}
        self.host_argmax = HostTokenIds(max_batch_size, inputs.device)
        start = time.perf_counter()
        pool = None
        for size in reversed(self.sizes):  # largest first: smaller ones reuse its memory
            self.graphs[size], self.logits[size], self.argmax[size] = self._capture(
                model, size, pool
            )
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
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        layout = self.decode_layout(size)
        pad_decode_rows(self.inputs.stage(layout), 0)
        self.inputs.upload()
        inputs = self.inputs.device_arrays(layout)
        meta = inputs.attention_metadata()

        def step() -> tuple[torch.Tensor, torch.Tensor]:
            hidden = model(inputs.input_ids, inputs.positions, meta)
            logits = model.compute_logits(hidden)
            # In the model's dtype: widening to fp32 is exact, so the argmax is the same.
            return logits, logits.argmax(dim=-1)

        step()  # outside the capture: compiles the Triton kernels, warms the allocator
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits, argmax = step()
        return graph, logits, argmax

    def replay(self, num_seqs: int) -> StepLogits:
        """Run the decode step staged at ``decode_layout(padded_size(num_seqs))``: its
        first ``num_seqs`` rows real, the others inert; their argmax is sent to the host."""
        size = self.padded_size(num_seqs)
        self.graphs[size].replay()
        self.host_argmax.send(self.argmax[size][:num_seqs])
        return StepLogits(self.logits[size][:num_seqs], self.host_argmax)
