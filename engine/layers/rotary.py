"""Rotary position embedding (RoPE), with the scaling schemes Llama-family checkpoints use,
and Qwen2-VL's multimodal RoPE (M-RoPE): three position streams (temporal, height,
width), each rotating its own section of every head's frequencies."""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.errors import UnsupportedModelError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_parameters(config) -> dict:
    """The RoPE settings of an HF config, whether written the transformers 5 way
    (``rope_parameters``) or the 4.x way (``rope_theta`` + ``rope_scaling``)."""
    params = getattr(config, "rope_parameters", None)
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params = dict(params)
    params["rope_type"] = params.get("rope_type", params.get("type")) or "default"
    if params["rope_type"] not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"RoPE scaling {params['rope_type']!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    return params


def inverse_frequencies(head_dim: int, params: dict) -> torch.Tensor:  # [head_dim // 2]
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (params["rope_theta"] ** exponents)
    if params["rope_type"] == "linear":
        return inv_freq / params["factor"]
    if params["rope_type"] == "llama3":
        return _llama3_scaled(inv_freq, params)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, params: dict) -> torch.Tensor:
    # Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(is_medium, blended, scaled)


def mrope_streams(section: list[int], interleaved: bool) -> torch.Tensor:
    """The stream (0 temporal, 1 height, 2 width) each frequency turns by
    ``[sum(section)]``: ``section[s]`` frequencies in a row each, or interleaved
    (Qwen3-VL: frequency ``j`` is height's when ``j % 3 == 1`` and ``j < 3 *
    section[1]``, width's when ``j % 3 == 2`` and ``j < 3 * section[2]``, else time's)."""
    if not interleaved:
        return torch.repeat_interleave(torch.arange(len(section)), torch.tensor(section))
    j = torch.arange(sum(section))
    streams = torch.zeros_like(j)
    for stream in (1, 2):
        streams[(j % 3 == stream) & (j < 3 * section[stream])] = stream
    return streams


class RotaryEmbedding(nn.Module):
    """The cos/sin tables by which the kernels (``kernels.rotary_write_kv_cache``) rotate
    the two halves of each head (the HF "rotate_half" convention).

    With ``mrope_section`` in ``params`` (M-RoPE) positions may also be ``[3, num_tokens]``:
    frequency ``j`` of each half turns by stream ``s``'s position, for the ``s`` whose
    section holds ``j`` (sections in a row, Qwen2-VL; or, with ``mrope_interleaved``,
    Qwen3-VL's round robin: see ``mrope_streams``). Tokens whose three positions are
    equal (all text) rotate as with plain RoPE, so text-only batches and decode pass
    ``[num_tokens]`` positions."""

    def __init__(self, head_dim: int, max_position: int, params: dict):
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        self.params = params
        self.mrope_section = params.get("mrope_section")
        if self.mrope_section is not None and sum(self.mrope_section) != head_dim // 2:
            raise UnsupportedModelError(
                f"mrope_section {self.mrope_section} does not cover half the head dim "
                f"({head_dim // 2})"
            )
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        # [head_dim // 2]: the stream each frequency turns by (M-RoPE only)
        self.register_buffer("mrope_streams", None, persistent=False)

    def init_buffers(self, device: torch.device) -> None:
        """Build the cos/sin tables (not in checkpoints; the model is built on meta)."""
        inv_freq = inverse_frequencies(self.head_dim, self.params).to(device)
        positions = torch.arange(self.max_position, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)  # [max_position, head_dim // 2]
        self.cos, self.sin = freqs.cos(), freqs.sin()
        if self.mrope_section is not None:
            self.mrope_streams = mrope_streams(
                self.mrope_section, bool(self.params.get("mrope_interleaved"))
            ).to(device)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, cos, sin)``: token ``t`` turns by ``cos[rows[t]]`` and ``sin[rows[t]]``
        (what the rotary kernels take). For ``[num_tokens]`` positions the rows are the
        positions into the whole tables; for M-RoPE ones, row ``t`` of per-token tables."""
        if positions.dim() == 1:
            return positions, self.cos, self.sin
        cos, sin = self.mrope_tables(positions)
        return torch.arange(positions.shape[1], device=positions.device), cos, sin

    def mrope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cos/sin ``[num_tokens, head_dim // 2]`` for M-RoPE ``positions``
        ``[3, num_tokens]``: the kernel then reads row ``t`` for token ``t``."""
        assert self.mrope_streams is not None, "3-stream positions need mrope_section"
        streams = self.mrope_streams
        # [num_tokens, head_dim // 2]: the position each frequency of each token turns by
        chosen = positions.t().gather(1, streams.expand(positions.shape[1], -1))
        columns = torch.arange(len(streams), device=positions.device)
        return self.cos[chosen, columns].contiguous(), self.sin[chosen, columns].contiguous()
