"""Perplexity over a text: exp of the mean next-token NLL over consecutive windows of
``seq_len`` tokens, each window scored on its own (how the AWQ and GPTQ papers report
WikiText-2). Two backends give the same numbers for a dense model: the engine (our model
code over its paged KV cache) and transformers (the reference; AWQ checkpoints are
dequantized for it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.config import EngineConfig
from engine.errors import EngineError
from engine.layers.attention import AttentionMetadata
from engine.llm_engine import LLMEngine
from engine.loader import load_config, resolve_model_dir
from engine.model_info import pick_device
from engine.quant.dense import load_dense
from engine.tokenizer import load_tokenizer

BACKENDS = ("engine", "transformers")
# LM-head rows per call: bounds the [rows, vocab] fp32 logits (vocabularies reach 256k).
LOGIT_ROWS = 512


@dataclass(frozen=True)
class Perplexity:
    nll_sum: float
    num_tokens: int  # tokens predicted (each window's first token is only context)

    @property
    def value(self) -> float:
        return math.exp(self.nll_sum / self.num_tokens)


def windows(token_ids: list[int], seq_len: int, max_tokens: int | None = None) -> list[list[int]]:
    """Consecutive windows of at most ``seq_len`` of the first ``max_tokens`` tokens."""
    token_ids = token_ids[:max_tokens] if max_tokens is not None else token_ids
    cut = [token_ids[i : i + seq_len] for i in range(0, len(token_ids), seq_len)]
    return [window for window in cut if len(window) >= 2]


def perplexity(
    model: str,
    text_file: str | Path,
    seq_len: int = 2048,
    max_tokens: int | None = None,
    backend: str = "engine",
    device: str = "auto",
) -> Perplexity:
    """Perplexity of ``model`` (a directory or Hub ID) on the text in ``text_file``."""
    if backend not in BACKENDS:
        raise EngineError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if seq_len < 2 or (max_tokens is not None and max_tokens < 2):
        raise EngineError("seq_len and max_tokens must be at least 2")
    model_dir = resolve_model_dir(model)
    limit = load_config(model_dir).max_position_embeddings
    if seq_len > limit:
        raise EngineError(f"seq_len {seq_len} exceeds the model's context of {limit} tokens")
    try:
        text = Path(text_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EngineError(f"cannot read {text_file}: {e}") from None
    token_ids = load_tokenizer(model_dir)(text, verbose=False).input_ids
    parts = windows(token_ids, seq_len, max_tokens)
    if not parts:
        raise EngineError(f"{text_file} has fewer than 2 tokens")
    if backend == "engine":
        return engine_perplexity(str(model_dir), parts, device)
    return transformers_perplexity(model_dir, parts, device)


@torch.inference_mode()
def engine_perplexity(model: str, parts: list[list[int]], device: str = "auto") -> Perplexity:
    """Scores each window in one prefill of the engine's model, every row's logits kept."""
    seq_len = max(len(window) for window in parts)
    # NOTE: on a CPU, fp32 throughout: "auto" would run int4/int8 matmuls in bf16 there
    # (engine/layers/cpu_quant.py), and a score should measure the weights alone.
    dtype = "float32" if pick_device(device).type == "cpu" else "auto"
    engine = LLMEngine(
        EngineConfig(model=model, device=device, dtype=dtype, max_model_len=seq_len, max_num_seqs=1)
    )
    net, block_size = engine.core.runner.model, engine.config.block_size
    num_blocks = -(-seq_len // block_size)
    if num_blocks > engine.core.block_manager.num_blocks:
        raise EngineError(f"the KV cache cannot hold a window of {seq_len} tokens")
    total = Perplexity(0.0, 0)
    for window in parts:
        n = len(window)
        ids = torch.tensor(window, device=engine.device)
        # NOTE: the engine serves no request, so its first blocks are free to use.
        meta = AttentionMetadata(
            slot_mapping=torch.arange(n, device=engine.device),
            block_tables=torch.arange(num_blocks, dtype=torch.int32, device=engine.device)[None],
            seq_lens=torch.tensor([n], dtype=torch.int32, device=engine.device),
            query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=engine.device),
        )
        hidden = net(ids, torch.arange(n, device=engine.device), meta)  # [n, hidden]
        total = _add(total, _window_nll(hidden[:-1], ids[1:], net.compute_logits))
    return total


@torch.inference_mode()
def transformers_perplexity(
    model_dir: Path, parts: list[list[int]], device: str = "auto"
) -> Perplexity:
    """The reference: transformers' model in fp32 (AWQ weights dequantized)."""
    target = pick_device(device)
    net = load_dense(model_dir, torch.float32).to(target)
    decoder, head = net.get_decoder(), net.get_output_embeddings()
    total = Perplexity(0.0, 0)
    for window in parts:
        ids = torch.tensor([window], device=target)
        hidden = decoder(input_ids=ids).last_hidden_state[0]
        total = _add(total, _window_nll(hidden[:-1], ids[0, 1:], head))
    return total


def _window_nll(
    hidden: torch.Tensor, targets: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]
) -> Perplexity:
    nll = 0.0
    for start in range(0, targets.numel(), LOGIT_ROWS):
        logits = head(hidden[start : start + LOGIT_ROWS]).float()
        nll += float(F.cross_entropy(logits, targets[start : start + LOGIT_ROWS], reduction="sum"))
    return Perplexity(nll, targets.numel())


def _add(a: Perplexity, b: Perplexity) -> Perplexity:
    return Perplexity(a.nll_sum + b.nll_sum, a.num_tokens + b.num_tokens)
