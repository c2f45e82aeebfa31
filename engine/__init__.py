"""edgechat's engine: requests in, tokens out, over a paged KV cache."""

from engine.async_llm import AsyncLLM
from engine.config import EngineConfig
from engine.errors import (
    EngineError,
    InvalidRequestError,
    ModelLoadError,
    PromptTooLongError,
    UnsupportedModelError,
)
from engine.llm import LLM
from engine.llm_engine import EngineStats, LLMEngine
from engine.outputs import RequestOutput, TokenLogprob
from engine.sampling import SamplingParams

__all__ = [
    "LLM",
    "AsyncLLM",
    "LLMEngine",
    "EngineConfig",
    "EngineStats",
    "SamplingParams",
    "RequestOutput",
    "TokenLogprob",
    "EngineError",
    "InvalidRequestError",
    "PromptTooLongError",
    "ModelLoadError",
    "UnsupportedModelError",
]
