"""Vision towers: CLIP (LLaVA-1.5) and SigLIP (VILA), one ViT implementation.

The two differ only in config: CLIP has a class token and a LayerNorm before the encoder
(``pre_layrnorm``, sic, as its checkpoints spell it); SigLIP has neither, and its patch
convolution has a bias. Module names follow the Hugging Face checkpoints, so weights load
by name. VLMs read an intermediate layer's hidden states, so the tower only builds the
layers up to the deepest one it is asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UnsupportedModelError


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": _quick_gelu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(f"activation {name!r} is not supported")
    return ACTIVATIONS[name]


class VisionEmbeddings(nn.Module):
    def __init__(self, config, class_token: bool):
        super().__init__()
        size = config.hidden_size
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embedding = nn.Conv2d(
            config.num_channels, size, config.patch_size, config.patch_size, bias=not class_token
        )
        self.class_embedding = nn.Parameter(torch.empty(size)) if class_token else None
        self.position_embedding = nn.Embedding(self.num_patches + int(class_token), size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # [num_images, num_patches, hidden]
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            cls = self.class_embedding.expand(patches.shape[0], 1, -1)
            patches = torch.cat([cls, patches], dim=1)
        return patches + self.position_embedding.weight


class VisionAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(size, size)
        self.k_proj = nn.Linear(size, size)
        self.v_proj = nn.Linear(size, size)
        self.out_proj = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_images, num_tokens, size = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # [num_images, num_heads, tokens, head_dim]
            return t.view(num_images, num_tokens, self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        )
        return self.out_proj(out.transpose(1, 2).reshape(num_images, num_tokens, size))


class VisionMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionEncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = VisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, config, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(config) for _ in range(num_layers))


class VisionTower(nn.Module):
    """``forward(pixel_values [num_images, 3, H, W])`` returns the hidden states of the
    ``feature_layers`` (Hugging Face ``hidden_states`` indices: 0 is the embeddings, -1
    the last layer, before any post-norm), concatenated on the hidden dimension."""

    def __init__(self, config, feature_layers: list[int]):
        super().__init__()
        class_token = config.model_type in ("clip_vision_model", "clip")
        if not class_token and config.model_type not in ("siglip_vision_model", "siglip"):
            raise UnsupportedModelError(f"vision tower {config.model_type!r} is not supported")
        num_states = config.num_hidden_layers + 1
        self.feature_layers = [i % num_states for i in feature_layers]
        self.embeddings = VisionEmbeddings(config, class_token)
        self.pre_layrnorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if class_token else None
        )
        self.encoder = VisionEncoder(config, max(self.feature_layers))
        self.has_class_token = class_token

    @property
    def num_patches(self) -> int:
        return self.embeddings.num_patches

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(pixel_values.to(self.embeddings.patch_embedding.weight.dtype))
        if self.pre_layrnorm is not None:
            hidden = self.pre_layrnorm(hidden)
        states = [hidden]
        for layer in self.encoder.layers:
            states.append(layer(states[-1]))
        return torch.cat([states[i] for i in self.feature_layers], dim=-1)
