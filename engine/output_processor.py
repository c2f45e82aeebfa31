"""Token deltas from the engine core into what callers receive: incremental text, stop
strings, logprob texts, ``RequestOutput``s.

Runs wherever the outputs are read (AsyncLLM: on the asyncio side, one ``RequestState``
per stream; LLM: inline after each step), never in the engine loop thread, with a
tokenizer of its own: decoding never waits on intake tokenizing a long prompt.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from engine.core import TokenDelta
from engine.detokenizer import IncrementalDetokenizer, token_text
from engine.outputs import OutputHistory, RequestOutput, TokenLogprob
from engine.sampling import SamplingParams


class TokenTexts:
    """``token_text`` of each id, decoded once: logprob listings name up to 21 tokens a
    step, mostly the same few."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self._tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __getitem__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = token_text(self._tokenizer, token_id)
        return text


class RequestState:
    """One request's outputs. ``apply`` takes each of the core's deltas in order; when a
    stop string ends the request, the output says "stop" before the core knows: whoever
    drives the core must abort the request there (``needs_abort``)."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        tokenizer: PreTrainedTokenizerBase,
        token_texts: TokenTexts,
    ):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids, params.stop)
        self._token_texts = token_texts
        wants_logprobs = params.logprobs is not None
        self._history = OutputHistory(logprobs=[] if wants_logprobs else None)
        self.finish_reason: str | None = None
        self.needs_abort = False

    def apply(self, delta: TokenDelta) -> RequestOutput:
        assert self.finish_reason is None, f"request {self.request_id} has finished already"
        history = self._history
        new_logprobs = self._logprobs(delta) if history.logprobs is not None else None
        history.token_ids += delta.new_token_ids
        # A request the core stopped on a stop token: that token has no text.
        text_ids = (
            delta.new_token_ids[:-1] if delta.finish_reason == "stop" else delta.new_token_ids
        )
        pieces = [self._detokenizer.add_token(t) for t in text_ids]
        if self._detokenizer.stopped:
            self.finish_reason = "stop"
            self.needs_abort = delta.finish_reason is None
        elif delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            # A request the engine failed on skips the flush, which may be what raised.
            if delta.finish_reason != "error":
                pieces.append(self._detokenizer.flush())
        new_text = "".join(pieces)
        if new_text:
            history.text_pieces.append(new_text)
        return RequestOutput(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            new_text=new_text,
            new_token_ids=delta.new_token_ids,
            new_logprobs=new_logprobs,
            finish_reason=self.finish_reason,
            num_cached_tokens=delta.num_cached_tokens,
            history=history,
            num_output_tokens=len(history.token_ids),
            num_text_pieces=len(history.text_pieces),
        )

    def _logprobs(self, delta: TokenDelta) -> list[TokenLogprob]:
        texts = self._token_texts
        new = [
            TokenLogprob(
                sample.token_id,
                texts[sample.token_id],
                sample.logprob,
                tuple((i, texts[i], lp) for i, lp in sample.top_logprobs),
            )
            for sample in delta.samples
        ]
        self._history.logprobs += new
        return new


class OutputProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self._token_texts = TokenTexts(tokenizer)

    def new_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> RequestState:
        return RequestState(request_id, prompt_token_ids, params, self.tokenizer, self._token_texts)
