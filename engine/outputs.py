"""What the engine hands back for a request: the newest part, and the whole output so far."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model (before sampling filters),
    with the ``top`` most likely alternatives as (token id, token text, logprob)."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass
class OutputHistory:
    """Everything a request has generated, append-only: an output stands for a prefix of
    it (its lengths at the time), so making one copies nothing."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    text_pieces: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RequestOutput:
    """The state of one request after an engine step.

    The ``new_*`` fields hold only what this step added (what a stream sends);
    ``text``/``token_ids``/``logprobs`` everything generated up to this output, built
    when read (a stream that reads only the new parts pays nothing for them).
    ``finish_reason`` is ``"stop"``, ``"length"``, ``"abort"`` or ``"error"`` (the engine
    failed on this request; see its log) once ``finished``.
    """

    request_id: str
    prompt_token_ids: list[int]
    new_text: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob] | None
    finish_reason: str | None
    num_cached_tokens: int
    history: OutputHistory = field(repr=False)
    num_output_tokens: int
    num_text_pieces: int

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return "".join(self.history.text_pieces[: self.num_text_pieces])

    @property
    def token_ids(self) -> list[int]:
        return self.history.token_ids[: self.num_output_tokens]

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        logprobs = self.history.logprobs
        return None if logprobs is None else logprobs[: self.num_output_tokens]
