"""Token logprobs in OpenAI's two formats: chat's and the legacy completions one."""

from __future__ import annotations

from engine import TokenLogprob

# JSON has no -Infinity; OpenAI reports impossible tokens with this floor.
MIN_LOGPROB = -9999.0


def _logprob(value: float) -> float:
    return max(value, MIN_LOGPROB)


def _entry(token: str, logprob: float) -> dict:
    # NOTE: bytes of the token's own decoded text; a token holding part of a UTF-8
    # character decodes to U+FFFD, so its bytes are those of U+FFFD (as in vLLM).
    return {"token": token, "logprob": _logprob(logprob), "bytes": list(token.encode("utf-8"))}


def chat_logprobs(items: list[TokenLogprob]) -> dict:
    """``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal"}``."""
    content = [
        {
            **_entry(item.token, item.logprob),
            "top_logprobs": [_entry(text, logprob) for _, text, logprob in item.top],
        }
        for item in items
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(items: list[TokenLogprob], text_offset: int) -> dict:
    """``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``; offsets count
    from ``text_offset``, the length of the choice's text before these tokens."""
    offsets = []
    for item in items:
        offsets.append(text_offset)
        text_offset += len(item.token)
    return {
        "tokens": [item.token for item in items],
        "token_logprobs": [_logprob(item.logprob) for item in items],
        "top_logprobs": [
            {text: _logprob(logprob) for _, text, logprob in item.top} for item in items
        ],
        "text_offset": offsets,
    }
