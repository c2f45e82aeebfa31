"""Turns a scheduled batch into tensors, runs the model over the paged cache, and returns
the logits of the sequences that sample this step. Decode batches replay CUDA graphs
once they are captured (GPU only); everything else runs eagerly.

The inputs go through persistent buffers (``StepInputs``): the step fills their host
side with a few numpy operations over the whole batch and sends them in one copy; block
tables are kept per sequence (``BlockTables``) and only their new blocks written.

VLM batches that reach image positions encode the images they lack (once per request,
or not at all on an embedding-cache hit) and pass the features of the positions being
computed to the model, which writes them over those tokens' embeddings.

M-RoPE models (Qwen2.5-VL) give a prompt with images three position streams. Past its
images a token's position is its index shifted by the prompt's delta: one stream, as
for any model, so decode (and its graphs) stay as they are. Steps that compute prompt
tokens of such a prompt pass the model ``[3, num_tokens]`` positions instead."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from engine.block_tables import BlockTables
from engine.cuda_graphs import DecodeGraphs
from engine.multimodal.embed_cache import ImageEmbeddingCache
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from engine.step_inputs import StepArrays, StepInputs, StepLayout, pad_decode_rows
from engine.step_logits import StepLogits


@dataclass
class _StepLists:
    """A step's per-sequence facts, gathered in one pass over the batch."""

    token_ids: list[int] = field(default_factory=list)  # the new tokens, flat
    starts: list[int] = field(default_factory=list)  # first new position, per sequence
    lengths: list[int] = field(default_factory=list)  # len(seq), per sequence
    rows: list[int] = field(default_factory=list)  # BlockTables row, per sequence
    width: int = 1  # the longest block table
    image_rows: list[int] = field(default_factory=list)
    image_embeds: list[torch.Tensor] = field(default_factory=list)
    # M-RoPE: (index in the batch, sequence) for each sequence with prompt positions.
    mrope_seqs: list[tuple[int, Sequence]] = field(default_factory=list)

    def computes_mrope_prompt(self) -> bool:
        """Whether the step computes prompt tokens of a prompt with M-RoPE positions."""
        return any(self.starts[i] < seq.num_prompt_tokens for i, seq in self.mrope_seqs)


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
        self.max_num_seqs = max_num_seqs
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        capacity = StepLayout(max_num_batched_tokens, max_num_seqs, self.max_blocks_per_seq)
        self.inputs = StepInputs(capacity, device)
        self.block_tables = BlockTables(self.max_blocks_per_seq, max_num_seqs)
        self.graphs: DecodeGraphs | None = None
        self.image_cache = image_cache

    def remove_request(self, seq_id: int) -> None:
        """Forget a finished or aborted sequence; a no-op for one the runner never ran."""
        self.block_tables.remove(seq_id)

    def capture_decode_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        """Capture decode for batches up to ``max_num_seqs`` sequences of up to
        ``max_model_len`` tokens, within the runner's limits (CUDA only; the KV cache
        must be bound, as the graphs read it)."""
        max_blocks_per_seq = -(-max_model_len // self.block_size)
        assert max_num_seqs <= self.max_num_seqs and max_blocks_per_seq <= self.max_blocks_per_seq
        self.graphs = DecodeGraphs(self.model, self.inputs, max_num_seqs, max_blocks_per_seq)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepLogits:
        """Compute the batch's KV; return the logits of ``batch.sampling``, one row per
        sequence in that order (``[len(batch.sampling), vocab]``)."""
        if any(seq.images for seq in batch.seqs):
            self._encode_images(batch)
        step = self._collect(batch)
        num_seqs, num_sampling = len(batch.seqs), len(batch.sampling)
        # A decode batch: one new token per sequence, and every sequence samples. (A
        # prompt's last token may be an image's, whose features the graphs cannot take.)
        is_decode = (
            len(step.token_ids) == num_sampling == num_seqs
            and not step.image_rows
            and not step.computes_mrope_prompt()
        )
        graphs = self.graphs
        if (
            graphs is not None
            and is_decode
            and num_seqs <= graphs.max_batch_size
            and step.width <= graphs.max_blocks_per_seq
        ):
            layout = graphs.decode_layout(graphs.padded_size(num_seqs))
            pad_decode_rows(self._stage(batch, step, layout), num_seqs)
            self.inputs.upload()
            return graphs.replay(num_seqs)

        layout = StepLayout(len(step.token_ids), num_seqs, step.width)
        if layout.num_bytes > self.inputs.capacity:
            # Only a caller running batches past the engine's limits gets here (a test
            # prefilling a whole prompt at once); the graphs read the buffer they have.
            assert self.graphs is None, f"{layout} exceeds the limits the graphs were built for"
            self.inputs = StepInputs(layout, self.device)
        host = self._stage(batch, step, layout)
        self.inputs.upload()
        inputs = self.inputs.device_arrays(layout)
        positions = inputs.positions
        if step.computes_mrope_prompt():
            positions = self._mrope_positions(step, host).to(self.device)
        images = {}
        if step.image_rows:
            images = dict(
                image_embeds=torch.cat(step.image_embeds),
                image_rows=torch.tensor(step.image_rows, dtype=torch.int64, device=self.device),
            )
        # Every slot staged here is a real one (only pad_decode_rows writes -1, for graphs).
        host_lens = (host.seq_lens.tolist(), host.query_start_loc.tolist())
        meta = inputs.attention_metadata(host_lens, negative_slots=False)
        hidden = self.model(inputs.input_ids, positions, meta, **images)
        logits = self.model.compute_logits(hidden[inputs.sample_rows[:num_sampling]])
        return StepLogits(logits.float())

    def _collect(self, batch: ScheduledBatch) -> _StepLists:
        """What the step takes from each sequence's Python state; brings its block-table
        row up to date."""
        step = _StepLists()
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            if seq.images:
                step.image_embeds += self._gather_images(
                    seq, start, start + num_new, len(step.token_ids), step.image_rows
                )
            step.token_ids += seq.token_ids[start : start + num_new]
            step.starts.append(start)
            step.lengths.append(len(seq))
            step.rows.append(self.block_tables.row_of(seq))
            step.width = max(step.width, len(seq.block_table))
            if seq.mrope is not None:
                step.mrope_seqs.append((len(step.starts) - 1, seq))
        return step

    def _stage(
        self, batch: ScheduledBatch, step: _StepLists, layout: StepLayout
    ) -> StepArrays[np.ndarray]:
        """Fill the host arrays of ``layout`` (its first ``len(batch)`` rows; a padded
        layout's others are left to the caller) with whole-batch numpy operations."""
        host = self.inputs.stage(layout)
        num_seqs, num_tokens, block_size = len(batch.seqs), len(step.token_ids), self.block_size
        num_new = np.array(batch.num_new_tokens, dtype=np.int64)  # [num_seqs]
        starts = np.array(step.starts, dtype=np.int64)
        ends = starts + num_new
        query_start_loc = host.query_start_loc[: num_seqs + 1]
        query_start_loc[0] = 0
        query_start_loc[1:] = np.cumsum(num_new)
        host.input_ids[:num_tokens] = step.token_ids
        # Flat row query_start_loc[i] + t is token t of sequence i, at position starts[i] + t.
        positions = host.positions[:num_tokens]
        offsets = np.repeat(starts - query_start_loc[:-1], num_new)
        np.add(np.arange(num_tokens), offsets, out=positions)
        tables = host.block_tables[:num_seqs]
        tables[:] = self.block_tables.rows[step.rows, : layout.width]
        blocks = tables[np.repeat(np.arange(num_seqs), num_new), positions // block_size]
        host.slot_mapping[:num_tokens] = blocks * block_size + positions % block_size
        if step.mrope_seqs:  # past the KV slots, positions are the rotary's
            deltas = np.zeros(num_seqs, dtype=np.int64)
            for i, seq in step.mrope_seqs:
                deltas[i] = seq.mrope.delta
            positions += np.repeat(deltas, num_new)
        host.seq_lens[:num_seqs] = ends
        # A sequence samples when the step reaches its last token (ScheduledBatch.sampling).
        sample_rows = query_start_loc[1:][ends == np.array(step.lengths)] - 1
        host.sample_rows[: len(sample_rows)] = sample_rows
        return host

    @staticmethod
    def _mrope_positions(step: _StepLists, host: StepArrays[np.ndarray]) -> torch.Tensor:
        """``[3, num_tokens]`` positions: each M-RoPE prompt token's own, and every
        other token's single position in all three streams."""
        num_tokens = len(step.token_ids)
        positions = np.repeat(host.positions[None, :num_tokens], 3, axis=0)
        for i, seq in step.mrope_seqs:
            start, row = step.starts[i], int(host.query_start_loc[i])
            end = min(int(host.seq_lens[i]), seq.num_prompt_tokens)
            if start < end:
                positions[:, row : row + end - start] = seq.mrope.positions[:, start:end]
        return torch.from_numpy(positions)

    def _encode_images(self, batch: ScheduledBatch) -> None:
        """Give every sequence the features of the images this step reaches: from the
        embedding cache, or encoded here, all of the step's new images in one batch."""
        missing: list[tuple[Sequence, int]] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            for i in seq.images_in(start, start + num_new):
                if i in seq.image_embeds:
                    continue
                features = None
                if self.image_cache is not None:
                    features = self.image_cache.get(seq.images[i].content_hash)
                if features is None:
                    missing.append((seq, i))
                else:
                    seq.image_embeds[i] = features
        if not missing:
            return
        # One batch per pixel shape: dynamic-resolution models (Qwen2.5-VL) take any size.
        by_shape: dict[tuple[int, ...], list[tuple[Sequence, int]]] = {}
        for seq, i in missing:
            by_shape.setdefault(tuple(seq.images[i].pixel_values.shape), []).append((seq, i))
        for group in by_shape.values():
            pixels = torch.stack([seq.images[i].pixel_values for seq, i in group])
            encoded = self.model.encode_images(pixels.to(self.device))
            for (seq, i), features in zip(group, encoded):
                # A copy: a view would keep the whole batch's features alive in the cache.
                seq.image_embeds[i] = features.clone()
                if self.image_cache is not None:
                    self.image_cache.put(seq.images[i].content_hash, seq.image_embeds[i])

    @staticmethod
    def _gather_images(
        seq: Sequence, start: int, end: int, first_row: int, image_rows: list[int]
    ) -> list[torch.Tensor]:
        """The features of ``seq``'s image positions in ``[start, end)``; appends their
        rows in the flat batch (whose row ``first_row`` is position ``start``)."""
        positions, starts = seq.image_positions, seq.image_starts
        lo, hi = bisect.bisect_left(positions, start), bisect.bisect_left(positions, end)
        image_rows += (first_row + p - start for p in positions[lo:hi])
        pieces = []
        for i in seq.images_in(start, end):
            first, last = max(lo, starts[i]), min(hi, starts[i + 1])
            pieces.append(seq.image_embeds[i][first - starts[i] : last - starts[i]])
        return pieces
