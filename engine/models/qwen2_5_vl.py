"""Qwen2.5-VL in Hugging Face format (``Qwen2_5_VLForConditionalGeneration``): the
dynamic-resolution vision tower of qwen_vision.py and a Qwen2 language model whose
rotary is M-RoPE (``mrope_section`` in its RoPE parameters; engine/layers/rotary.py).

An image takes as many tokens as its size gives (engine/multimodal/qwen_images.py), so
``num_image_tokens`` is None: the request side counts each image's. The positions of a
prompt's tokens come from the request side too (engine/multimodal/mrope.py), and reach
``forward`` as ``[3, num_tokens]`` when a step computes prompt tokens of a prompt with
images; the language model takes them as they come.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine.errors import UnsupportedModelError
from engine.models.llama import LlamaForCausalLM, Qwen2ForCausalLM
from engine.models.llava import VisionLanguageModelBase
from engine.models.qwen_vision import QwenVisionTower

# Checkpoint prefix -> ours. transformers >= 4.52 nests everything under ``model.``; the
# Hub's checkpoints (saved by older versions) keep ``visual.`` and ``model.`` (the LM).
PREFIXES = [
    ("model.visual.", "visual."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("visual.", "visual."),
    ("model.", "language_model.model."),
]


class Qwen2_5_VLForConditionalGeneration(VisionLanguageModelBase):
    """Also the base of Qwen3-VL (qwen3_vl.py), which differs in its tower and text model."""

    num_image_tokens = None  # it varies with each image's size
    vision_tower_class: type[nn.Module] = QwenVisionTower
    text_model_class: type[LlamaForCausalLM] = Qwen2ForCausalLM

    def __init__(self, config):
        super().__init__()
        self.config = config
        text_config = config.text_config
        if "mrope_section" not in (getattr(text_config, "rope_parameters", None) or {}):
            raise UnsupportedModelError("Qwen2.5-VL's text config names no mrope_section")
        if text_config.hidden_size != config.vision_config.out_hidden_size:
            raise UnsupportedModelError(
                f"the vision merger makes {config.vision_config.out_hidden_size} features, "
                f"the language model takes {text_config.hidden_size}"
            )
        self.image_token_id: int = config.image_token_id
        self.visual = self.vision_tower_class(config.vision_config)
        self.language_model = self.text_model_class(self.language_config(config))

    @staticmethod
    def language_config(config):
        """A copy of the text config that says whether the LM head is the embedding: the
        Qwen-VL configs keep ``tie_word_embeddings`` (True for the small ones) in the outer
        config only."""
        text_config = copy.copy(config.text_config)
        text_config.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        return text_config

    def checkpoint_name(self, name: str) -> str | None:
        """Our name for a checkpoint tensor; None for one we do not use."""
        for old, new in PREFIXES:
            if name.startswith(old):
                return new + name[len(old) :]
        return name

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, grid_t, grid_h / 2, grid_w / 2, 4, patch_dim]`` (images, or
        videos of ``grid_t`` temporal patches, of one size, as engine/multimodal's
        qwen_images.py and qwen_video.py lay them out) -> ``[num_images, num_tokens,
        hidden]``: one tower pass per image and per temporal patch (attention never
        crosses either, as transformers' per-frame sequence lengths have it)."""
        return torch.stack(
            [torch.cat([self.visual(frame[None]) for frame in image]) for image in pixel_values]
        )
