"""Turns a scheduled batch into tensors, runs the model over the paged cache, and returns
the logits of the sequences that sample this step. Decode batches replay CUDA graphs
once they are captured (GPU only); everything else runs eagerly.

VLM batches that reach image positions encode the images they lack (once per request,
or not at all on an embedding-cache hit) and pass the features of the positions being
computed to the model, which writes them over those tokens' embeddings."""

from __future__ import annotations

import bisect

import torch
from torch import nn

from engine.cuda_graphs import DecodeGraphs
from engine.layers.attention import AttentionMetadata
from engine.multimodal.embed_cache import ImageEmbeddingCache
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        block_size: int,
        device: torch.device,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        image_cache: ImageEmbeddingCache | None = None,
    ):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.graphs: DecodeGraphs | None = None
        self.image_cache = image_cache

    def remove_request(self, seq_id: int) -> None:
        """Forget what the runner keeps for a finished sequence (nothing yet)."""

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
        image_rows: list[int] = []
        image_embeds: list[torch.Tensor] = []
        if self.image_cache is not None:
            self._encode_images(batch)
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new
            if seq.images:
                image_embeds += self._gather_images(
                    seq, start, end, query_start_loc[-1], image_rows
                )
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
        # A decode batch: one new token per sequence, and every sequence samples. (A
        # prompt's last token may be an image's, whose features the graphs cannot take.)
        is_decode = len(input_ids) == len(sample_rows) == len(batch.seqs)
        if (
            self.graphs is not None
            and is_decode
            and not image_rows
            and len(batch.seqs) <= self.graphs.max_batch_size
        ):
            return self.graphs.run(input_ids, positions, slot_mapping, block_tables, seq_lens)

        meta = AttentionMetadata(
            slot_mapping=self._tensor(slot_mapping, torch.int64),
            block_tables=self._tensor(block_tables, torch.int32),
            seq_lens=self._tensor(seq_lens, torch.int32),
            query_start_loc=self._tensor(query_start_loc, torch.int32),
        )
        images = {}
        if image_rows:
            images = dict(
                image_embeds=torch.cat(image_embeds),
                image_rows=self._tensor(image_rows, torch.int64),
            )
        hidden = self.model(
            self._tensor(input_ids, torch.int64),
            self._tensor(positions, torch.int64),
            meta,
            **images,
        )
        logits = self.model.compute_logits(hidden[self._tensor(sample_rows, torch.int64)])
        return logits.float()

    def _tensor(self, data: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype, device=self.device)

    def _encode_images(self, batch: ScheduledBatch) -> None:
        """Give every sequence the features of the images this step reaches: from the
        embedding cache, or encoded here, all of the step's new images in one batch."""
        missing: list[tuple[Sequence, int]] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            for i in seq.images_in(start, start + num_new):
                if i in seq.image_embeds:
                    continue
                features = self.image_cache.get(seq.images[i].content_hash)
                if features is None:
                    missing.append((seq, i))
                else:
                    seq.image_embeds[i] = features
        if not missing:
            return
        pixels = torch.stack([seq.images[i].pixel_values for seq, i in missing])
        encoded = self.model.encode_images(pixels.to(self.device))
        for (seq, i), features in zip(missing, encoded):
            # A copy: a view would keep the whole batch's features alive in the cache.
            seq.image_embeds[i] = features.clone()
            self.image_cache.put(seq.images[i].content_hash, seq.image_embeds[i])

    @staticmethod
    def _gather_images(
        seq: Sequence, start: int, end: int, first_row: int, image_rows: list[int]
    ) -> list[torch.Tensor]:
        """The features of ``seq``'s image positions in ``[start, end)``; appends their
        rows in the flat batch (whose row ``first_row`` is position ``start``)."""
        positions = seq.image_positions
        per_image = len(positions) // len(seq.images)
        lo, hi = bisect.bisect_left(positions, start), bisect.bisect_left(positions, end)
        image_rows += (first_row + p - start for p in positions[lo:hi])
        pieces = []
        for i in seq.images_in(start, end):
            first = max(lo, i * per_image)
            last = min(hi, (i + 1) * per_image)
            pieces.append(seq.image_embeds[i][first - i * per_image : last - i * per_image])
        return pieces
