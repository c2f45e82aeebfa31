"""Qwen3-VL in Hugging Face format (``Qwen3VLForConditionalGeneration``): Qwen2.5-VL's
frame (qwen2_5_vl.py: checkpoint names, images of any size, M-RoPE positions from the
request side) around Qwen3-VL's vision tower (qwen3_vision.py) and a Qwen3 language model
(q/k norms) whose M-RoPE interleaves the three streams over the frequencies.

DeepStack: the tower gives each image token its merger's features and one more vector
per DeepStack layer, side by side (``[n, num_features * hidden]``), so the runner slices,
caches and chunks them as it does any features: the first vector replaces the token's
embedding, vector ``j + 1`` is added to its hidden state after the language model's
layer ``j``. A chunk of a prompt carries the features of exactly its own image tokens.
"""

from __future__ import annotations

import torch

from engine.layers.attention import AttentionMetadata
from engine.models.llama import Qwen3ForCausalLM
from engine.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from engine.models.qwen3_vision import Qwen3VisionTower


class Qwen3VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    vision_tower_class = Qwen3VisionTower
    text_model_class = Qwen3ForCausalLM

    @staticmethod
    def language_config(config):
        """Qwen2.5-VL's, with the M-RoPE interleaved: transformers' Qwen3-VL always
        interleaves, whatever ``mrope_interleaved`` says."""
        text_config = Qwen2_5_VLForConditionalGeneration.language_config(config)
        text_config.rope_parameters = {**text_config.rope_parameters, "mrope_interleaved": True}
        return text_config

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        image_embeds: torch.Tensor | None = None,
        image_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``image_embeds[i]`` (``[num_features * hidden]``) is token ``image_rows[i]``'s:
        its embedding, then its DeepStack features."""
        if image_embeds is None:
            return self.language_model(input_ids, positions, meta)
        hidden = self.language_model.config.hidden_size
        embeds = self.embed_with_images(input_ids, image_embeds[:, :hidden], image_rows)
        # [num_deepstack_layers, n, hidden]
        deepstack = image_embeds[:, hidden:].unflatten(1, (-1, hidden)).transpose(0, 1)
        return self.language_model.model(
            input_ids, positions, meta, input_embeds=embeds, deepstack=(image_rows, deepstack)
        )
