"""Logits -> next tokens (+ logprobs): argmax for greedy rows, one random draw per row for
the others (from the request's own generator when it is seeded)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from engine.penalties import TokenPenalties, changes_logits
from engine.sampling import SamplingParams
from engine.step_logits import HostTokenIds
from engine.structured.masks import TokenMasks


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
    presence/frequency penalties (output tokens), the grammar's token mask on the
    constrained rows (``masks``); then greedy rows take the argmax and the others go
    through temperature, top-k, top-p, min-p and one random draw. Logprobs are those of
    the model's RAW logits (log_softmax before any bias, penalty, mask, temperature or
    filter), as OpenAI reports them.

    Greedy rows draw nothing. A seeded request draws from its own generator, exactly one
    draw per sampled token, so it gets the same tokens whatever shares its batch, and a
    preempted and recomputed request picks its stream up where it left it. Unseeded rows
    share one draw from the sampler's generator (seeded at random).

    NOTE: the penalties' token counts are kept here, so every token ``sample`` returns
    must be appended to its request (or the request removed).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(secrets.randbits(64))
        # seq_id -> the request's own generator; None for an unseeded request.
        self._requests: dict[int, torch.Generator | None] = {}
        self.penalties = TokenPenalties(self.device)

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    def add_request(self, seq: SampleRequest) -> None:
        """Register ``seq``; it gets a generator of its own when it has a seed."""
        assert seq.seq_id not in self._requests, f"sequence {seq.seq_id} is already added"
        generator = None
        if seq.params.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seq.params.seed)
        self._requests[seq.seq_id] = generator

    def remove_request(self, seq_id: int) -> None:
        """Forget ``seq_id``; a no-op for an unknown id (abort may race finish)."""
        self._requests.pop(seq_id, None)
        self.penalties.remove(seq_id)

    def sample(
        self,
        logits: torch.Tensor,
        requests: Sequence[SampleRequest],
        masks: TokenMasks | None = None,
        argmax: HostTokenIds | None = None,
    ) -> list[SampleResult]:
        """``logits`` [num_requests, vocab_size]: row i belongs to ``requests[i]``. Every
        request that is not greedy must have been added with ``add_request``. ``masks``
        limits the rows it names to the tokens their grammars allow. ``argmax``, where the
        step computed it, is each row's argmax of ``logits``: a batch that wants only
        that (every request greedy, nothing changing its logits, no logprobs) takes it."""
        assert logits.dim() == 2 and logits.shape[0] == len(requests), (
            f"logits {tuple(logits.shape)} for {len(requests)} requests"
        )
        if argmax is not None and masks is None and all(_wants_argmax(r.params) for r in requests):
            return [SampleResult(t, None, ()) for t in argmax.receive()]
        # NOTE: .float() returns the caller's tensor when it already is fp32, so every
        # step below that touches it works out of place.
        logits = logits.float()
        wants_logprobs = any(r.params.logprobs is not None for r in requests)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if wants_logprobs else None

        logits = self.penalties.apply(logits, requests)
        if masks is not None:
            logits = masks.apply(logits)
        sampled_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        if len(sampled_rows) == len(requests):
            token_ids = self._sample_rows(logits, requests)
        else:
            token_ids = _argmax(logits)
            if sampled_rows:
                rows = torch.tensor(sampled_rows, device=logits.device)
                token_ids[rows] = self._sample_rows(
                    logits[rows], [requests[i] for i in sampled_rows]
                )

        results = (
            _with_logprobs(raw_logprobs, token_ids, requests)
            if raw_logprobs is not None
            else [SampleResult(t, None, ()) for t in token_ids.tolist()]
        )
        self.penalties.count(requests, token_ids)
        return results

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
            cutoff = _smallest_kept(logits, top_k if use_top_k else None, top_p, use_top_p)
            logits = logits.masked_fill(logits < cutoff, float("-inf"))

        probs = logits.softmax(dim=-1)
        if any(r.params.min_p > 0 for r in requests):
            probs.masked_fill_(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws token i with probability
        # p_i (no renormalisation needed). E = -log U with U uniform in [0, 1), so E is
        # in (0, inf]: a filtered token's 0 / E is 0, never NaN.
        return _argmax(probs.div_(self._uniform(probs.shape, requests).log_().neg_()))

    def _uniform(self, shape: torch.Size, requests: Sequence[SampleRequest]) -> torch.Tensor:
        """[rows, vocab] uniform draws: seeded rows each from their own generator, all
        the others in one draw from the sampler's."""
        noise = torch.empty(shape, device=self.device)
        generators = [self._requests[r.seq_id] for r in requests]
        unseeded = [row for row, g in enumerate(generators) if g is None]
        if len(unseeded) == len(requests):
            return noise.uniform_(generator=self._generator)
        for row, generator in enumerate(generators):
            if generator is not None:
                noise[row].uniform_(generator=generator)
        if unseeded:
            rows = torch.tensor(unseeded, device=self.device)
            draws = torch.empty(len(unseeded), shape[1], device=self.device)
            noise[rows] = draws.uniform_(generator=self._generator)
        return noise


def _smallest_kept(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor, use_top_p: bool
) -> torch.Tensor:
    """[rows, 1]: each row's smallest logit that top-k, then top-p (over the top-k
    renormalised), keep; every logit at least as large is kept (ties at the cut too).
    Only the sorted values are needed, not the permutation: on a CPU a sort with indices
    (and the scatter back) costs ten times a sort of values alone."""
    ranked = _sorted_descending(logits)
    rows, vocab_size = ranked.shape
    rank = torch.arange(vocab_size, device=logits.device)
    num_kept = torch.full((rows, 1), vocab_size, device=logits.device)
    if top_k is not None:
        k = top_k.long()
        num_kept = torch.where((k > 0) & (k < vocab_size), k, num_kept)
    if use_top_p:
        probs = ranked.masked_fill(rank >= num_kept, float("-inf")).softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # Rows at top_p == 1 are left alone: rounding can push the cumulative sum past 1
        # and would cut their tail. The first token's mass before it is 0 < top_p.
        within = (mass_before < top_p) | (top_p >= 1)
        num_kept = (within & (rank < num_kept)).sum(dim=-1, keepdim=True)
    return ranked.gather(1, num_kept - 1)


def _wants_argmax(params: SamplingParams) -> bool:
    """Whether a request's next token is its raw logits' argmax, and all it needs."""
    return params.greedy and params.logprobs is None and not changes_logits(params)


def _argmax(values: torch.Tensor) -> torch.Tensor:  # [rows, vocab] -> [rows] int64
    """Each row's index of its first largest value."""
    if values.device.type == "cpu" and values.dtype == torch.float32:
        # numpy's is ~15x faster than torch's on a CPU (one 152k-vocab row: 25 us vs 390).
        return torch.from_numpy(values.numpy().argmax(axis=-1))
    return values.argmax(dim=-1)


def _sorted_descending(logits: torch.Tensor) -> torch.Tensor:
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        # numpy's sort of values is several times faster than torch's on a CPU.
        return torch.from_numpy(np.ascontiguousarray(np.sort(logits.numpy(), axis=-1)[:, ::-1]))
    return logits.sort(dim=-1, descending=True).values


def _with_logprobs(
    raw_logprobs: torch.Tensor, token_ids: torch.Tensor, requests: Sequence[SampleRequest]
) -> list[SampleResult]:
    """Pair each chosen token with its raw logprob and top-N alternatives where asked."""
    chosen = raw_logprobs.gather(1, token_ids.unsqueeze(1))  # [rows, 1]
    num_top = min(max(r.params.logprobs or 0 for r in requests), raw_logprobs.shape[-1])
    top_values, top_ids = raw_logprobs.topk(num_top, dim=-1)  # [rows, num_top]
    # One device-to-host copy: fp64 holds the token ids and the fp32 logprobs exactly.
    packed = torch.cat(
        [token_ids.unsqueeze(1).double(), top_ids.double(), chosen.double(), top_values.double()],
        dim=1,
    ).tolist()
    results = []
    for request, row in zip(requests, packed, strict=True):
        num_logprobs = request.params.logprobs
        token_id, ids, logprob, values = (
            int(row[0]),
            row[1 : 1 + num_top],
            row[1 + num_top],
            row[2 + num_top :],
        )
        top = tuple((int(i), v) for i, v in zip(ids, values))[: num_logprobs or 0]
        results.append(SampleResult(token_id, None if num_logprobs is None else logprob, top))
    return results
