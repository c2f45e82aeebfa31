"""edgechat's engine: requests in, tokens out, over a paged KV cache."""

from engine.async_llm import AsyncLLM
from engine.config import EngineConfig
from engine.core import EngineCore, EngineStats, TokenDelta
from engine.errors import (
    EngineError,
    InvalidRequestError,
    ModelLoadError,
    PromptTooLongError,
    UnsupportedModelError,
)
from engine.inputs import PreparedPrompt
from engine.llm import LLM
from engine.llm_engine import LLMEngine
from engine.multimodal.images import ImageInput
from engine.outputs import RequestOutput, TokenLogprob
from engine.sampling import SamplingParams

__all__ = [
    "LLM",
    "AsyncLLM",
    "LLMEngine",
    "EngineCore",
    "EngineConfig",
    "EngineStats",
    "SamplingParams",
    "PreparedPrompt",
    "ImageInput",
    "RequestOutput",
    "TokenDelta",
    "TokenLogprob",
    "EngineError",
    "InvalidRequestError",
    "PromptTooLongError",
    "ModelLoadError",
    "UnsupportedModelError",
]
