"""Facts about a checkpoint that the engine derives once: device, dtype, context
length, end-of-sequence tokens."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from engine.cpu_dtype import auto_cpu_dtype
from engine.errors import EngineError

logger = logging.getLogger(__name__)

DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EngineError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' was asked for but no CUDA GPU is available")
    if device.type not in ("cpu", "cuda"):
        raise EngineError(f"device {name!r} is not supported; use auto, cpu or cuda[:N]")
    return device


def pick_dtype(
    name: str, hf_config, device: torch.device, int8_linears: bool = False
) -> torch.dtype:
    """``auto``: on CPU fp32 where the native int8-activation kernels run the quantized
    linears (``int8_linears``), else bf16 where it is native, else fp32
    (engine/cpu_dtype.py); on GPU the checkpoint's 16-bit type, or bf16 (fp16 where bf16
    is unsupported) for fp32 checkpoints."""
    if name != "auto":
        return DTYPE_NAMES[name]
    if device.type == "cpu":
        dtype, why = auto_cpu_dtype(int8_linears)
        logger.info("dtype auto on CPU: %s, as %s", str(dtype).removeprefix("torch."), why)
        return dtype
    stored = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = DTYPE_NAMES.get(stored)
    if stored in (torch.float16, torch.bfloat16):
        return stored
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def max_context_len(hf_config, requested: int | None) -> int:
    """The longest context we serve: the model's own limit (and its sliding window,
    which we do not implement, so contexts stay within it), or less if asked."""
    limit = hf_config.max_position_embeddings
    window = getattr(hf_config, "sliding_window", None)
    uses_window = getattr(hf_config, "use_sliding_window", True)
    if window and uses_window and window < limit:
        logger.info("context capped at the model's sliding window of %d tokens", window)
        limit = window
    if requested is None:
        return limit
    if requested > limit:
        raise EngineError(f"max_model_len {requested} exceeds the model's context of {limit}")
    return requested


def eos_token_ids(model_dir: Path, hf_config, tokenizer) -> frozenset[int]:
    """Every token that ends generation: generation_config.json's, the config's and the
    tokenizer's EOS (Llama 3 instruct models end turns with a token only the first names)."""
    ids: set[int] = set()
    generation_config = model_dir / "generation_config.json"
    sources = [getattr(hf_config, "eos_token_id", None), tokenizer.eos_token_id]
    if generation_config.exists():
        try:
            sources.append(json.loads(generation_config.read_text()).get("eos_token_id"))
        except json.JSONDecodeError:
            logger.warning("ignoring unreadable %s", generation_config)
    for source in sources:
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(i for i in source if isinstance(i, int))
    return frozenset(ids)
