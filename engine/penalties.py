"""logit_bias and the repetition, presence and frequency penalties, over token counts
kept per request and updated one sampled token at a time: a step costs the same at the
2000th token as at the first, instead of recounting every request's whole history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from engine.sampling import SamplingParams


class PenalisedRequest(Protocol):
    seq_id: int
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]


def uses_counts(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1
        or params.presence_penalty != 0
        or params.frequency_penalty != 0
    )


def changes_logits(params: SamplingParams) -> bool:
    """Whether ``apply`` changes this request's logits."""
    return bool(params.logit_bias) or uses_counts(params)


class TokenPenalties:
    """Rows of ``output_counts`` [rows, vocab] (how often each token was generated) and
    ``seen`` [rows, vocab] (in the prompt or generated), one row per request with a
    count-based penalty. Row 0 stays empty: the other requests of a batch read it.

    A request's row is built from its token lists the first time ``apply`` meets it;
    from then on ``count`` adds each sampled token. NOTE: so every token ``count`` is
    given must become the request's next output token (a preempted request keeps its
    tokens, so its counts stay right)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.output_counts = torch.zeros(1, 0, device=self.device)
        self.seen = torch.zeros(1, 0, dtype=torch.bool, device=self.device)
        self._rows: dict[int, int] = {}  # seq_id -> row
        self._free_rows: list[int] = []

    def remove(self, seq_id: int) -> None:
        """Free ``seq_id``'s row; a no-op for a request that has none."""
        row = self._rows.pop(seq_id, None)
        if row is not None:
            self._free_rows.append(row)

    def apply(self, logits: torch.Tensor, requests: Sequence[PenalisedRequest]) -> torch.Tensor:
        """Add logit_bias, then the HF repetition penalty over prompt + output tokens
        (positive logits divided by it, negative ones multiplied), then OpenAI presence
        and frequency penalties over output tokens (``-= frequency * count + presence *
        (count > 0)``).

        ``logits`` [num_requests, vocab_size] fp32 is not modified; it is returned as it
        is when no request uses any of these."""
        params = [r.params for r in requests]
        if any(p.logit_bias for p in params):
            logits = _add_logit_bias(logits, params)
        if not any(uses_counts(p) for p in params):
            return logits
        rows = torch.tensor(self._rows_of(requests, logits.shape[-1]), device=logits.device)
        knobs = torch.tensor(
            [[p.repetition_penalty, p.frequency_penalty, p.presence_penalty] for p in params],
            dtype=logits.dtype,
            device=logits.device,
        )
        repetition, frequency, presence = (col.unsqueeze(1) for col in knobs.unbind(1))
        if any(p.repetition_penalty != 1 for p in params):
            # Rows at 1 come out unchanged: x / 1 == x * 1 == x.
            penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
            logits = torch.where(self.seen[rows], penalised, logits)
        if any(p.presence_penalty != 0 or p.frequency_penalty != 0 for p in params):
            counts = self.output_counts[rows]
            logits = logits - frequency * counts - presence * (counts > 0)
        return logits

    def count(self, requests: Sequence[PenalisedRequest], token_ids: torch.Tensor) -> None:
        """Record ``token_ids[i]`` as ``requests[i]``'s next output token."""
        batch_rows, rows = [], []
        for i, request in enumerate(requests):
            row = self._rows.get(request.seq_id)
            if row is not None:
                batch_rows.append(i)
                rows.append(row)
        if not rows:
            return
        index = torch.tensor([batch_rows, rows], device=token_ids.device)
        tokens = token_ids[index[0]]
        self.output_counts.index_put_(
            (index[1], tokens),
            torch.ones_like(tokens, dtype=self.output_counts.dtype),
            accumulate=True,
        )
        self.seen[index[1], tokens] = True

    def _rows_of(self, requests: Sequence[PenalisedRequest], vocab_size: int) -> list[int]:
        """Each request's row: 0 for those without count-based penalties; the others'
        built now if they have none yet."""
        if self.output_counts.shape[1] != vocab_size:
            assert not self._rows, "the vocabulary changed under live requests"
            self.output_counts = torch.zeros(1, vocab_size, device=self.device)
            self.seen = torch.zeros(1, vocab_size, dtype=torch.bool, device=self.device)
        rows = []
        for request in requests:
            row = self._rows.get(request.seq_id, 0)
            if row == 0 and uses_counts(request.params):
                row = self._rows[request.seq_id] = self._new_row(request)
            rows.append(row)
        return rows

    def _new_row(self, request: PenalisedRequest) -> int:
        if not self._free_rows:
            self._grow()
        row = self._free_rows.pop()
        output_ids = torch.tensor(request.output_token_ids, dtype=torch.long, device=self.device)
        prompt_ids = torch.tensor(request.prompt_token_ids, dtype=torch.long, device=self.device)
        counts = self.output_counts[row]
        counts.zero_().index_add_(0, output_ids, torch.ones_like(output_ids, dtype=counts.dtype))
        seen = self.seen[row]
        seen.zero_()
        seen[prompt_ids] = True
        seen[output_ids] = True
        return row

    def _grow(self) -> None:
        """Double the rows (rare: a step with more penalised requests than ever before)."""
        num_rows = self.output_counts.shape[0]
        self.output_counts = torch.cat([self.output_counts, torch.zeros_like(self.output_counts)])
        self.seen = torch.cat([self.seen, torch.zeros_like(self.seen)])
        self._free_rows += range(2 * num_rows - 1, num_rows - 1, -1)


def _add_logit_bias(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    rows = [row for row, p in enumerate(params) for _ in p.logit_bias]
    token_ids = [token_id for p in params for token_id in p.logit_bias]
    values = [value for p in params for value in p.logit_bias.values()]
    return logits.index_put(
        (
            torch.tensor(rows, device=logits.device),
            torch.tensor(token_ids, device=logits.device),
        ),
        torch.tensor(values, dtype=logits.dtype, device=logits.device),
        accumulate=True,
    )
