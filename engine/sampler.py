"""Logits -> next tokens (+ logprobs), with one random generator per request."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from engine.sampling import SamplingParams


class SampleRequest(Protocol):
    """What the sampler reads from a request; the engine's sequences satisfy it."""

    seq_id: int
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]


@dataclass(frozen=True)
class SampleResult:
    """One request's next token. ``logprob`` is None unless ``params.logprobs`` is set;
    ``top_logprobs`` holds ``params.logprobs`` (id, logprob) pairs, most likely first."""

    token_id: int
    logprob: float | None
    top_logprobs: tuple[tuple[int, float], ...]


class Sampler:
    """Chooses each request's next token from its row of logits.

    Order, all in fp32: logit_bias, repetition penalty (prompt + output tokens),
    presence/frequency penalties (output tokens); then greedy rows take the argmax and
    the others go through temperature, top-k, top-p, min-p and one random draw from the
    request's own generator. Logprobs are those of the model's RAW logits (log_softmax
    before any bias, penalty, temperature or filter), as OpenAI reports them.

    Every sampled token consumes exactly one draw from its request's generator, so a
    seeded request gets the same tokens whatever shares its batch, and a preempted and
    recomputed request picks its stream up where it left it.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._generators: dict[int, torch.Generator] = {}

    @property
    def num_requests(self) -> int:
        return len(self._generators)

    def add_request(self, seq_id: int, seed: int | None) -> None:
        """Create ``seq_id``'s generator, seeded by ``seed`` or, when None, at random."""
        assert seq_id not in self._generators, f"sequence {seq_id} already has a generator"
        generator = torch.Generator(device=self.device)
        generator.manual_seed(secrets.randbits(64) if seed is None else seed)
        self._generators[seq_id] = generator

    def remove_request(self, seq_id: int) -> None:
        """Drop ``seq_id``'s generator; a no-op for an unknown id (abort may race finish)."""
        self._generators.pop(seq_id, None)

    def sample(self, logits: torch.Tensor, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        """``logits`` [num_requests, vocab_size]: row i belongs to ``requests[i]``. Every
        request that is not greedy must have been added with ``add_request``."""
        assert logits.dim() == 2 and logits.shape[0] == len(requests), (
            f"logits {tuple(logits.shape)} for {len(requests)} requests"
        )
        # NOTE: .float() returns the caller's tensor when it already is fp32, so every
        # step below that touches it works out of place.
        logits = logits.float()
        wants_logprobs = any(r.params.logprobs is not None for r in requests)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if wants_logprobs else None

        logits = apply_penalties(logits, requests)
        sampled_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        if len(sampled_rows) == len(requests):
            token_ids = self._sample_rows(logits, requests)
        else:
            token_ids = logits.argmax(dim=-1)
            if sampled_rows:
                rows = torch.tensor(sampled_rows, device=logits.device)
                token_ids[rows] = self._sample_rows(
                    logits[rows], [requests[i] for i in sampled_rows]
                )

        if raw_logprobs is None:
            return [SampleResult(t, None, ()) for t in token_ids.tolist()]
        return _with_logprobs(raw_logprobs, token_ids, requests)

    def _sample_rows(self, logits: torch.Tensor, requests: Sequence[SampleRequest]) -> torch.Tensor:
        """Temperature, top-k, top-p, min-p, then one draw per row; returns ids [rows]."""
        vocab_size = logits.shape[-1]
        # One host-to-device copy for all four per-row parameters.
        knobs = torch.tensor(
            [
                [r.params.temperature, r.params.top_k, r.params.top_p, r.params.min_p]
                for r in requests
            ],
            dtype=torch.float32,
            device=logits.device,
        )
        temperature, top_k, top_p, min_p = (col.unsqueeze(1) for col in knobs.unbind(1))
        logits = logits / temperature

        use_top_k = any(0 < r.params.top_k < vocab_size for r in requests)
        use_top_p = any(r.params.top_p < 1 for r in requests)
        if use_top_k or use_top_p:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            if use_top_k:
                rank = torch.arange(vocab_size, device=logits.device, dtype=torch.float32)
                sorted_logits.masked_fill_((rank >= top_k) & (top_k > 0), float("-inf"))
            if use_top_p:
                sorted_probs = sorted_logits.softmax(dim=-1)
                mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
                # Rows at top_p == 1 are left alone: rounding can push the cumulative sum
                # past 1 and would cut their tail.
                sorted_logits.masked_fill_((mass_before >= top_p) & (top_p < 1), float("-inf"))
            logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)

        probs = logits.softmax(dim=-1)
        if any(r.params.min_p > 0 for r in requests):
            probs.masked_fill_(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)

        # Exponential race: argmax(p / E) with E ~ Exp(1) draws token i with probability
        # p_i (no renormalisation needed), and each row's E comes from its own generator.
        noise = torch.empty_like(probs)
        for row, request in enumerate(requests):
            noise[row].exponential_(generator=self._generators[request.seq_id])
        # A zero draw would turn a filtered token's 0 / 0 into NaN, which argmax picks.
        noise.clamp_min_(torch.finfo(noise.dtype).tiny)
        return probs.div_(noise).argmax(dim=-1)


def apply_penalties(logits: torch.Tensor, requests: Sequence[SampleRequest]) -> torch.Tensor:
    """Add logit_bias, then the HF repetition penalty over prompt + output tokens (positive
    logits divided by it, negative ones multiplied), then OpenAI presence/frequency
    penalties over output tokens (``-= frequency * count + presence * (count > 0)``).

    ``logits`` [num_requests, vocab_size] fp32 is not modified; it is returned as it is
    when no request uses any of these."""
    params = [r.params for r in requests]
    if any(p.logit_bias for p in params):
        rows = [row for row, p in enumerate(params) for _ in p.logit_bias]
        token_ids = [token_id for p in params for token_id in p.logit_bias]
        values = [value for p in params for value in p.logit_bias.values()]
        logits = logits.index_put(
            (
                torch.tensor(rows, device=logits.device),
                torch.tensor(token_ids, device=logits.device),
            ),
            torch.tensor(values, dtype=logits.dtype, device=logits.device),
            accumulate=True,
        )

    use_repetition = any(p.repetition_penalty != 1 for p in params)
    use_occurrence = any(p.presence_penalty != 0 or p.frequency_penalty != 0 for p in params)
    if not (use_repetition or use_occurrence):
        return logits

    vocab_size = logits.shape[-1]
    output_counts = _token_counts([r.output_token_ids for r in requests], vocab_size, logits)
    if use_repetition:
        prompt_counts = _token_counts([r.prompt_token_ids for r in requests], vocab_size, logits)
        seen = (prompt_counts + output_counts) > 0
        penalty = torch.tensor(
            [p.repetition_penalty for p in params], dtype=logits.dtype, device=logits.device
        ).unsqueeze(1)
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalised, logits)
    if use_occurrence:
        frequency, presence = torch.tensor(
            [[p.frequency_penalty, p.presence_penalty] for p in params],
            dtype=logits.dtype,
            device=logits.device,
        ).unbind(1)
        logits = (
            logits
            - frequency.unsqueeze(1) * output_counts
            - presence.unsqueeze(1) * (output_counts > 0)
        )
    return logits


def _token_counts(
    token_lists: list[list[int]], vocab_size: int, like: torch.Tensor
) -> torch.Tensor:
    """How often each token id occurs in each list: [len(token_lists), vocab_size]."""
    width = max(map(len, token_lists), default=0)
    # Pad with the id one past the vocabulary and drop that column afterwards.
    padded = torch.tensor(
        [ids + [vocab_size] * (width - len(ids)) for ids in token_lists],
        dtype=torch.long,
        device=like.device,
    )
    counts = torch.zeros(len(token_lists), vocab_size + 1, dtype=like.dtype, device=like.device)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=like.dtype))
    return counts[:, :vocab_size]


def _with_logprobs(
    raw_logprobs: torch.Tensor, token_ids: torch.Tensor, requests: Sequence[SampleRequest]
) -> list[SampleResult]:
    """Pair each chosen token with its raw logprob and top-N alternatives where asked."""
    chosen = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1).tolist()
    num_top = min(max(r.params.logprobs or 0 for r in requests), raw_logprobs.shape[-1])
    top: list[list[tuple[int, float]]] = [[] for _ in requests]
    if num_top:
        top_values, top_ids = raw_logprobs.topk(num_top, dim=-1)
        top = [
            list(zip(ids, values, strict=True))
            for ids, values in zip(top_ids.tolist(), top_values.tolist(), strict=True)
        ]
    results = []
    for row, (request, token_id) in enumerate(zip(requests, token_ids.tolist(), strict=True)):
        num_logprobs = request.params.logprobs
        logprob = None if num_logprobs is None else chosen[row]
        results.append(SampleResult(token_id, logprob, tuple(top[row][: num_logprobs or 0])))
    return results
