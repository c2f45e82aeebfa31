"""Request fields into the engine's SamplingParams, one per choice."""

from __future__ import annotations

from engine import SamplingParams
from server.errors import bad_request
from server.protocol import SamplingFields


def sampling_params(
    body: SamplingFields, max_tokens: int, logprobs: int | None
) -> list[SamplingParams]:
    """``body.n`` SamplingParams. With a seed, choice i gets ``seed + i``: the choices
    differ, yet the whole response is reproducible. Values are checked by SamplingParams
    (InvalidRequestError, answered with a 400)."""
    common = dict(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=_logit_bias(body.logit_bias),
        stop=_stop(body.stop),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
    )
    seeds = [None if body.seed is None else body.seed + i for i in range(body.n)]
    return [SamplingParams(seed=seed, **common) for seed in seeds]


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    # JSON object keys are strings; OpenAI's are token ids written in decimal.
    try:
        return {int(token_id): value for token_id, value in (bias or {}).items()}
    except ValueError:
        raise bad_request("logit_bias keys must be token ids", param="logit_bias") from None


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)
