"""The engine's per-request bookkeeping around a Sequence: stop checks, detokenized
text, logprobs, and the outputs handed to callers."""

from __future__ import annotations

from engine.detokenizer import IncrementalDetokenizer, token_text
from engine.outputs import RequestOutput, TokenLogprob
from engine.sampler import SampleResult
from engine.sequence import Sequence


class Request:
    def __init__(self, seq: Sequence, detokenizer: IncrementalDetokenizer):
        self.seq = seq
        self.detokenizer = detokenizer
        wants_logprobs = seq.params.logprobs is not None
        self.logprobs: list[TokenLogprob] | None = [] if wants_logprobs else None
        self.num_reported_tokens = 0
        self.reported_text_len = 0
        self.finish_reason: str | None = None

    def accept(self, result: SampleResult, tokenizer, eos_token_ids: frozenset[int]) -> str | None:
        """Take the token just appended to the sequence; return why the request must
        stop now (``"stop"``/``"length"``), or None to go on."""
        params = self.seq.params
        token_id = result.token_id
        if self.logprobs is not None:
            self.logprobs.append(
                TokenLogprob(
                    token_id,
                    token_text(tokenizer, token_id),
                    result.logprob,
                    tuple((i, token_text(tokenizer, i), lp) for i, lp in result.top_logprobs),
                )
            )
        if token_id in params.stop_token_ids or (
            not params.ignore_eos and token_id in eos_token_ids
        ):
            return "stop"
        self.detokenizer.add_token(token_id)
        if self.detokenizer.stopped:
            return "stop"
        if self.seq.num_output_tokens >= params.max_tokens:
            return "length"
        return None

    def finish(self, reason: str) -> None:
        self.detokenizer.flush()
        self.finish_reason = reason

    def snapshot(self) -> RequestOutput:
        """Everything so far, plus what is new since the last snapshot."""
        token_ids = self.seq.output_token_ids
        text = self.detokenizer.text
        new_from = self.num_reported_tokens
        output = RequestOutput(
            request_id=self.seq.request_id,
            prompt_token_ids=self.seq.prompt_token_ids,
            text=text,
            token_ids=token_ids,
            logprobs=None if self.logprobs is None else list(self.logprobs),
            new_text=text[self.reported_text_len :],
            new_token_ids=token_ids[new_from:],
            new_logprobs=None if self.logprobs is None else self.logprobs[new_from:],
            finished=self.finish_reason is not None,
            finish_reason=self.finish_reason,
            num_cached_tokens=self.seq.num_cached_tokens,
        )
        self.num_reported_tokens = len(token_ids)
        self.reported_text_len = len(text)
        return output
