"""CUDA graphs for decode steps: at batch 1 a step is hundreds of small kernels, and on a
fast GPU launching them costs more than running them. Each captured batch size replays
the whole forward and the LM head from static input buffers; a smaller batch is padded
up to the next captured size.

Padding rows are inert: slot -1 (the KV write skips it), context length 1 over a valid
block, and their logits are dropped.
"""

from __future__ import annotations

import bisect
import logging
import time

import torch
from torch import nn

from engine.layers.attention import AttentionMetadata

logger = logging.getLogger(__name__)


def capture_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, ... up to ``max_batch_size``, which is always included."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return [*sizes, max_batch_size]


class DecodeGraphs:
    """Captures at construction; ``run`` replays the smallest graph that fits a batch."""

    def __init__(
        self, model: nn.Module, max_batch_size: int, max_blocks_per_seq: int, device: torch.device
    ):
        self.sizes = capture_sizes(max_batch_size)
        self.input_ids = torch.zeros(max_batch_size, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch_size, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_batch_size,), -1, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(
            max_batch_size, max_blocks_per_seq, dtype=torch.int32, device=device
        )
        self.seq_lens = torch.ones(max_batch_size, dtype=torch.int32, device=device)
        # One new token per sequence, so the query offsets never change.
        self.query_start_loc = torch.arange(max_batch_size + 1, dtype=torch.int32, device=device)
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

    @torch.inference_mode()
    def _capture(
        self, model: nn.Module, size: int, pool
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            seq_lens=self.seq_lens[:size],
            query_start_loc=self.query_start_loc[: size + 1],
        )

        def step() -> torch.Tensor:
            hidden = model(self.input_ids[:size], self.positions[:size], meta)
            return model.compute_logits(hidden)

        step()  # outside the capture: compiles the Triton kernels, warms the allocator
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = step()
        return graph, logits

    def run(
        self,
        input_ids: list[int],
        positions: list[int],
        slot_mapping: list[int],
        block_tables: list[list[int]],
        seq_lens: list[int],
    ) -> torch.Tensor:  # [len(input_ids), vocab], a fresh tensor
        """Replay for a decode batch of at most ``max_batch_size`` sequences."""
        num_seqs = len(input_ids)
        size = self.sizes[bisect.bisect_left(self.sizes, num_seqs)]
        width = len(block_tables[0])
        self.input_ids[:num_seqs].copy_(torch.tensor(input_ids, dtype=torch.int64))
        self.positions[:num_seqs].copy_(torch.tensor(positions, dtype=torch.int64))
        self.slot_mapping[:num_seqs].copy_(torch.tensor(slot_mapping, dtype=torch.int64))
        self.block_tables[:num_seqs, :width].copy_(torch.tensor(block_tables, dtype=torch.int32))
        self.seq_lens[:num_seqs].copy_(torch.tensor(seq_lens, dtype=torch.int32))
        # Earlier, larger batches left real rows here: make them padding again.
        self.slot_mapping[num_seqs:size].fill_(-1)
        self.seq_lens[num_seqs:size].fill_(1)
        self.graphs[size].replay()
        # A copy: the next replay overwrites the graph's output.
        return self.logits[size][:num_seqs].to(torch.float32, copy=True)
