"""Turns a scheduled batch into tensors, runs the model over the paged cache, and returns
the logits of the sequences that sample this step. Decode batches replay CUDA graphs
once they are captured (GPU only); everything else runs eagerly."""

from __future__ import annotations

import torch
from torch import nn

from engine.cuda_graphs import DecodeGraphs
from engine.layers.attention import AttentionMetadata
from engine.scheduler import ScheduledBatch


class ModelRunner:
    def __init__(self, model: nn.Module, block_size: int, device: torch.device):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.graphs: DecodeGraphs | None = None

    def capture_decode_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        """Capture decode for batches up to ``max_num_seqs`` (CUDA only; the KV cache
        must be bound, as the graphs read it)."""
        max_blocks = -(-max_model_len // self.block_size)
        self.graphs = DecodeGraphs(self.model, max_num_seqs, max_blocks, self.device)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Compute the batch's KV; return the logits of ``batch.sampling``, one row per
        sequence in that order: ``[len(batch.sampling), vocab]`` in fp32."""
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        sample_rows: list[int] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new
            input_ids += seq.token_ids[start:end]
            positions += range(start, end)
            slot_mapping += (
                seq.block_table[p // self.block_size] * self.block_size + p % self.block_size
                for p in range(start, end)
            )
            query_start_loc.append(query_start_loc[-1] + num_new)
            seq_lens.append(end)
            if end == len(seq):
                sample_rows.append(query_start_loc[-1] - 1)
        max_blocks = max(len(seq.block_table) for seq in batch.seqs)
        block_tables = [
            table + [0] * (max_blocks - len(table))
            for table in (seq.block_table for seq in batch.seqs)
        ]
        # A decode batch: one new token per sequence, and every sequence samples.
        if self.graphs is not None and (
            len(input_ids) == len(sample_rows) == len(batch.seqs) <= self.graphs.max_batch_size
        ):
            return self.graphs.run(input_ids, positions, slot_mapping, block_tables, seq_lens)

        meta = AttentionMetadata(
            slot_mapping=self._tensor(slot_mapping, torch.int64),
            block_tables=self._tensor(block_tables, torch.int32),
            seq_lens=self._tensor(seq_lens, torch.int32),
            query_start_loc=self._tensor(query_start_loc, torch.int32),
        )
        hidden = self.model(
            self._tensor(input_ids, torch.int64), self._tensor(positions, torch.int64), meta
        )
        logits = self.model.compute_logits(hidden[self._tensor(sample_rows, torch.int64)])
        return logits.float()

    def _tensor(self, data: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype, device=self.device)
