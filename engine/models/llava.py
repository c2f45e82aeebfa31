"""LLaVA-1.5 in Hugging Face format (``LlavaForConditionalGeneration``): a vision tower,
a two-layer MLP projector (``mlp2x_gelu``) and a Llama-family language model.

The text path is our Llama unchanged. Image features are computed by ``encode_images``
(once per image, by the runner) and written over the image tokens' embeddings by
``forward`` when a batch carries them; batches without images take the text-only path.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from engine.errors import UnsupportedModelError
from engine.layers.attention import AttentionMetadata, PagedAttention
from engine.models.llama import LlamaForCausalLM, Qwen2ForCausalLM
from engine.models.vision import VisionTower, activation

TEXT_MODELS: dict[str, type[LlamaForCausalLM]] = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
}


def language_model(text_config, family: str) -> LlamaForCausalLM:
    """The language half of a ``family`` VLM, refused when we do not implement it."""
    if text_config.model_type not in TEXT_MODELS:
        raise UnsupportedModelError(
            f"{family} with a {text_config.model_type!r} language model is not supported"
        )
    return TEXT_MODELS[text_config.model_type](text_config)


# Checkpoint prefix -> ours. transformers >= 4.52 nests everything under ``model.``;
# older checkpoints (and llava-hf on the Hub) keep CLIPVisionModel's ``vision_model.``.
PREFIXES = [
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("vision_tower.vision_model.", "vision_tower."),
]
_VISION_LAYER = re.compile(r"vision_tower\.encoder\.layers\.(\d+)\.")


def tower_name(name: str, tower: VisionTower) -> str | None:
    """``name`` (ours), or None for a tensor of the tower's unused tail: the layers past
    the deepest feature layer, the post-norm, a pooling head."""
    if name.startswith("vision_tower."):
        layer = _VISION_LAYER.match(name)
        if layer is not None:
            return name if int(layer[1]) < len(tower.encoder.layers) else None
        if name.startswith(("vision_tower.post_layernorm.", "vision_tower.head.")):
            return None
    return name


class LlavaProjector(nn.Module):
    def __init__(self, in_size: int, out_size: int, act: str, bias: bool):
        super().__init__()
        self.linear_1 = nn.Linear(in_size, out_size, bias=bias)
        self.act = activation(act)
        self.linear_2 = nn.Linear(out_size, out_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class VisionLanguageModelBase(nn.Module):
    """What LLaVA and VILA share: a Llama-family ``language_model`` whose embeddings
    image features overwrite. Subclasses build the vision side and ``encode_images``."""

    fused_layers = LlamaForCausalLM.fused_layers
    quantized_scope = "language_model.model.layers"
    image_token_id: int | None = None
    language_model: LlamaForCausalLM

    def init_buffers(self, device: torch.device) -> None:
        self.language_model.init_buffers(device)

    def attention_layers(self) -> list[PagedAttention]:
        return self.language_model.attention_layers()

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        image_embeds: torch.Tensor | None = None,
        image_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``image_embeds[i]`` (``[n, hidden]``) replaces the embedding of token
        ``image_rows[i]`` of the flat batch."""
        if image_embeds is None:
            return self.language_model(input_ids, positions, meta)
        embeds = self.embed_with_images(input_ids, image_embeds, image_rows)
        return self.language_model.model(input_ids, positions, meta, input_embeds=embeds)

    def embed_with_images(
        self, input_ids: torch.Tensor, image_embeds: torch.Tensor, image_rows: torch.Tensor
    ) -> torch.Tensor:
        """The token embeddings ``[num_tokens, hidden]``, ``image_embeds`` over rows
        ``image_rows``."""
        embeds = self.language_model.model.embed_tokens(input_ids)
        embeds[image_rows] = image_embeds.to(embeds.dtype)
        return embeds

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.compute_logits(hidden)


class LlavaForConditionalGeneration(VisionLanguageModelBase):
    def __init__(self, config):
        super().__init__()
        self.config = config
        layers = config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        self.select_strategy = config.vision_feature_select_strategy
        if self.select_strategy not in ("default", "full"):
            raise UnsupportedModelError(
                f"vision_feature_select_strategy {self.select_strategy!r} is not supported"
            )
        self.image_token_id: int = config.image_token_id
        self.vision_tower = VisionTower(config.vision_config, layers)
        self.multi_modal_projector = LlavaProjector(
            config.vision_config.hidden_size * len(layers),
            config.text_config.hidden_size,
            config.projector_hidden_act,
            getattr(config, "multimodal_projector_bias", True),
        )
        self.language_model = language_model(config.text_config, "LLaVA")

    @property
    def num_image_tokens(self) -> int:
        """Positions (and features) one image takes in the prompt."""
        tower = self.vision_tower
        return (
            tower.num_patches + int(tower.has_class_token) - int(self.select_strategy == "default")
        )

    def checkpoint_name(self, name: str) -> str | None:
        """Our name for a checkpoint tensor; None for one we do not use."""
        for old, new in PREFIXES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        return tower_name(name, self.vision_tower)

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, 3, H, W]`` -> ``[num_images, num_image_tokens, hidden]``."""
        features = self.vision_tower(pixel_values)
        if self.select_strategy == "default":
            features = features[:, 1:]
        return self.multi_modal_projector(features)
