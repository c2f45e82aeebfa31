"""The engine core: schedule -> run -> sample -> append, over a paged KV cache.

No tokenizer: it takes Sequences (built by the input processor), stops them on EOS, stop
token ids, ``max_tokens`` and the context's end, and returns per-request token deltas,
nothing proportional to a sequence's length. Text, stop strings and logprob texts are
the output processor's. Not thread-safe: one thread (AsyncLLM's loop) drives it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.block_manager import BlockManager
from engine.errors import InvalidRequestError
from engine.runner import ModelRunner
from engine.sampler import Sampler, SampleResult
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence
from engine.structured.masks import MaskFiller

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenDelta:
    """What one step did to one request: the tokens it added (with their logprobs when
    asked for, in ``samples``) and, once it ends, why. A delta that ends with "stop"
    ends in the stop token (EOS or a stop token id)."""

    request_id: str
    new_token_ids: list[int]
    samples: list[SampleResult]
    finish_reason: str | None
    num_cached_tokens: int


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load, for metrics."""

    num_running: int
    num_waiting: int
    num_blocks: int
    num_free_blocks: int
    kv_cache_usage: float
    num_prefix_query_tokens: int
    num_prefix_hit_tokens: int
    num_preemptions: int
    num_prompt_tokens: int
    num_generation_tokens: int
    num_image_cache_hits: int = 0
    num_image_cache_misses: int = 0


class EngineCore:
    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        sampler: Sampler,
        eos_token_ids: frozenset[int],
        max_model_len: int,
    ):
        self.scheduler = scheduler
        self.runner = runner
        self.sampler = sampler
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.requests: dict[str, Sequence] = {}
        self.masks = MaskFiller(sampler.device)
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0

    @property
    def block_manager(self) -> BlockManager:
        return self.scheduler.block_manager

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def add(self, seq: Sequence) -> None:
        if seq.request_id in self.requests:
            raise InvalidRequestError(f"request id {seq.request_id!r} is already in use")
        self.requests[seq.request_id] = seq
        self.sampler.add_request(seq)
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> TokenDelta | None:
        """End a request now and free its KV blocks; None if it is not running."""
        seq = self.requests.get(request_id)
        if seq is None:
            return None
        return self._finish(seq, "abort")

    def step(self) -> list[TokenDelta]:
        """One scheduling round: a delta for every request that got a token or finished
        in it (prefill-only steps of chunked prompts give none).

        A request whose work raises is finished with reason ``"error"`` (and the exception
        logged); the others go on. When the batch as a whole fails, its sequences are run
        again one at a time to find the ones at fault.
        """
        batch = self.scheduler.schedule()
        if not batch:
            return []
        deltas: list[TokenDelta] = []
        try:
            results = self._run(batch)
        except Exception:
            logger.exception("a batch of %d sequences failed; running them one by one", len(batch))
            batch, results = self._run_one_by_one(batch, deltas)
        self.scheduler.complete_step(batch)
        for seq in batch.seqs:
            seq.drop_computed_image_embeds()
        for seq, result in zip(batch.sampling, results):
            try:
                deltas.append(self._append(seq, result))
            except Exception:
                logger.exception("request %s failed", seq.request_id)
                deltas.append(self._finish(seq, "error"))
        return deltas

    def _run(self, batch: ScheduledBatch) -> list[SampleResult]:
        # NOTE: writes nothing but the KV slots of the batch's uncomputed tokens (and the
        # random draws of its sampled rows), so a batch that raises can be run again.
        step = self.runner.run(batch)
        # A step of prompt chunks only (a long prompt alone) has nothing to sample.
        if not batch.sampling:
            return []
        # NOTE: after run() has queued the forward pass: on a GPU the constrained rows'
        # masks are filled while the model runs (the sampler waits for the logits).
        masks = self.masks.fill(batch.sampling)
        return self.sampler.sample(step.logits, batch.sampling, masks, argmax=step.argmax)

    def _run_one_by_one(
        self, batch: ScheduledBatch, deltas: list[TokenDelta]
    ) -> tuple[ScheduledBatch, list[SampleResult]]:
        """Run each sequence of a failed batch alone; fail those that still raise (their
        deltas go to ``deltas``). Returns the batch of the others and their results."""
        survivors = ScheduledBatch()
        results: list[SampleResult] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            alone = ScheduledBatch()
            alone.add(seq, num_new)
            try:
                results += self._run(alone)
            except Exception:
                logger.exception("request %s failed", seq.request_id)
                deltas.append(self._finish(seq, "error"))
                continue
            survivors.add(seq, num_new)
        return survivors, results

    def _append(self, seq: Sequence, result: SampleResult) -> TokenDelta:
        if seq.num_output_tokens == 0:
            self.num_prompt_tokens += seq.num_prompt_tokens
        token_id = result.token_id
        if seq.grammar is not None:
            seq.grammar.accept(token_id)
        seq.append_token(token_id)
        self.num_generation_tokens += 1
        params = seq.params
        reason = None
        # A grammar ends on its EOS even under ignore_eos: nothing may follow it.
        if (
            token_id in params.stop_token_ids
            or (not params.ignore_eos and token_id in self.eos_token_ids)
            or (seq.grammar is not None and seq.grammar.is_finished)
        ):
            reason = "stop"
        elif seq.num_output_tokens >= params.max_tokens or len(seq) >= self.max_model_len:
            reason = "length"
        samples = [result] if params.logprobs is not None else []
        if reason is not None:
            self._release(seq, reason)
        return TokenDelta(seq.request_id, [token_id], samples, reason, seq.num_cached_tokens)

    def _finish(self, seq: Sequence, reason: str) -> TokenDelta:
        self._release(seq, reason)
        return TokenDelta(seq.request_id, [], [], reason, seq.num_cached_tokens)

    def _release(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        self.sampler.remove_request(seq.seq_id)
        self.runner.remove_request(seq.seq_id)
        seq.grammar = None
        del self.requests[seq.request_id]

    def stats(self) -> EngineStats:
        bm = self.block_manager
        cache = self.runner.image_cache
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_blocks=bm.num_blocks,
            num_free_blocks=bm.num_free_blocks,
            kv_cache_usage=bm.usage,
            num_prefix_query_tokens=bm.num_prefix_query_tokens,
            num_prefix_hit_tokens=bm.num_prefix_hit_tokens,
            num_preemptions=self.scheduler.num_preemptions,
            num_prompt_tokens=self.num_prompt_tokens,
            num_generation_tokens=self.num_generation_tokens,
            num_image_cache_hits=cache.num_hits if cache is not None else 0,
            num_image_cache_misses=cache.num_misses if cache is not None else 0,
        )
