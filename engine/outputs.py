"""What the engine hands back for a request: the whole output so far and the newest part."""

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
class RequestOutput:
    """The state of one request after an engine step.

    ``text``/``token_ids``/``logprobs`` hold everything generated so far; the ``new_*``
    fields hold only what this step added (what a stream sends). ``finish_reason`` is
    ``"stop"``, ``"length"``, ``"abort"`` or ``"error"`` (the engine failed on this
    request; see its log) once ``finished``.
    """

    request_id: str
    prompt_token_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    new_text: str = ""
    new_token_ids: list[int] = field(default_factory=list)
    new_logprobs: list[TokenLogprob] | None = None
    finished: bool = False
    finish_reason: str | None = None
    num_cached_tokens: int = 0
