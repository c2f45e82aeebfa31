"""What the engine needs of a model: the contract every class in the registry keeps."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from engine.layers.attention import AttentionMetadata, PagedAttention


@runtime_checkable
class TextModel(Protocol):
    """A decoder over the paged KV cache.

    ``fused_layers``: checkpoint layers fused into one of ours, name -> (our layer, index
    in its outputs). ``quantized_scope``: the module path under which AWQ int4 layers
    may be (AutoAWQ never quantizes the LM head, nor a VLM's vision side).
    """

    fused_layers: dict[str, tuple[str, int]]
    quantized_scope: str

    def checkpoint_name(self, name: str) -> str | None:
        """Our name for a checkpoint tensor; None for one we do not use."""

    def init_buffers(self, device: torch.device) -> None:
        """Called after ``to_empty()``: whatever is built rather than loaded."""

    def attention_layers(self) -> list[PagedAttention]:
        """The layers whose K/V pools ``allocate_kv_cache`` binds, in order."""

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """A flat batch of new tokens -> final hidden states ``[num_tokens, hidden]``."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head over the rows that sample: ``[rows, vocab]``."""


@runtime_checkable
class VisionLanguageModel(TextModel, Protocol):
    """A TextModel whose prompts hold images: each takes ``num_image_tokens`` positions
    (None: as many as its size gives, counted by the request side) marked by
    ``image_token_id`` (None: the tokenizer lends a token), and ``forward`` takes
    ``image_embeds``/``image_rows`` to write features over those embeddings. M-RoPE
    models (Qwen2.5-VL) take ``positions`` ``[3, num_tokens]`` too."""

    image_token_id: int | None
    num_image_tokens: int | None

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, 3, H, W]`` -> ``[num_images, num_image_tokens, hidden]`` (a
        multiple of hidden for Qwen3-VL: its DeepStack features ride beside each token's)."""
