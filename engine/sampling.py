"""Per-request sampling parameters, validated at construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from engine.errors import InvalidRequestError
from engine.structured.spec import StructuredOutputSpec


@dataclass(frozen=True)
class SamplingParams:
    """How one request's tokens are chosen and when it stops.

    ``temperature == 0`` means greedy. ``top_k <= 0`` and ``top_p == 1`` and ``min_p == 0``
    disable those filters. ``seed`` makes the request reproducible whatever else shares
    its batch. ``logprobs = N`` returns the chosen token's log-probability and the top-N
    alternatives (N = 0: only the chosen token); ``None`` returns none. ``structured``
    constrains the text to a schema, regex, choice or grammar (engine.structured).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    structured: StructuredOutputSpec | None = None

    MAX_LOGPROBS = 20

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the frozen object hashable-ish and immutable.
        object.__setattr__(self, "stop", _as_tuple(self.stop, str, "stop"))
        object.__setattr__(
            self, "stop_token_ids", _as_tuple(self.stop_token_ids, int, "stop_token_ids")
        )
        # A read-only copy: the params are shared between threads and choices.
        object.__setattr__(self, "logit_bias", MappingProxyType(dict(self.logit_bias)))
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequestError(
                f"max_tokens must be at least 1, got {self.max_tokens}", "max_tokens"
            )
        if self.temperature < 0:
            raise InvalidRequestError(
                f"temperature must be >= 0, got {self.temperature}", "temperature"
            )
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if not isinstance(self.top_k, int):
            raise InvalidRequestError(f"top_k must be an integer, got {self.top_k!r}", "top_k")
        if not 0 <= self.min_p <= 1:
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p}", "min_p")
        if self.repetition_penalty <= 0:
            raise InvalidRequestError(
                f"repetition_penalty must be > 0, got {self.repetition_penalty}",
                "repetition_penalty",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2 <= value <= 2:
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {value}", name)
        if self.logprobs is not None and not 0 <= self.logprobs <= self.MAX_LOGPROBS:
            raise InvalidRequestError(
                f"logprobs must be in [0, {self.MAX_LOGPROBS}], got {self.logprobs}",
                "logprobs",
            )
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty", "stop")
        for token_id, bias in self.logit_bias.items():
            if not isinstance(token_id, int) or not -100 <= bias <= 100:
                raise InvalidRequestError(
                    f"logit_bias maps token ids to values in [-100, 100], got {token_id}: {bias}",
                    "logit_bias",
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _as_tuple(value, item_type: type, name: str) -> tuple:
    if isinstance(value, item_type):
        value = (value,)
    items = tuple(value)
    if not all(isinstance(item, item_type) for item in items):
        raise InvalidRequestError(f"{name} must hold only {item_type.__name__} values", name)
    return items
