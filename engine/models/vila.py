"""VILA1.5 (NVIDIA's ``llava_llama``): a SigLIP tower, an MLP projector (``mlp2x_gelu``,
or ``mlp_downsample``, which first merges each 2x2 block of patches into one token) and a
Llama language model, each saved in its own subfolder: ``llm/``, ``vision_tower/``,
``mm_projector/``.

transformers cannot read the top-level config (its ``model_type`` is unknown there), so
``VilaConfig`` assembles it from the three parts. Weights load under the subfolder's name
as a prefix (see ``engine.weights.checkpoint_entries``); the text path and the way image
features enter it are LLaVA's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig

from engine.errors import ModelLoadError, UnsupportedModelError
from engine.models.llava import VisionLanguageModelBase, language_model, tower_name
from engine.models.vila_templates import vila_conversation_template
from engine.models.vision import VisionTower

# Subfolder-prefixed checkpoint names -> ours (the projector's are ours already).
PREFIXES = [
    ("llm.model.", "language_model.model."),
    ("llm.lm_head.", "language_model.lm_head."),
    ("vision_tower.vision_model.", "vision_tower."),
]


class VilaConfig:
    """The parts of VILA's config the engine reads, shaped like a LLaVA config
    (``text_config``, ``vision_config``, ``get_text_config()``), plus where the
    tokenizer and the image preprocessor live."""

    def __init__(self, model_dir: Path):
        raw = _read_json(model_dir / "config.json")
        if raw.get("s2"):
            # S2 runs the tower at several resolutions and concatenates the features.
            raise UnsupportedModelError(
                f"{model_dir} is a VILA S2 (multi-scale vision) checkpoint, which is not "
                "supported; use the model without -s2"
            )
        projector = model_dir / "mm_projector" / "config.json"
        projector_raw = _read_json(projector) if projector.exists() else {}
        self.architectures = raw.get("architectures") or ["LlavaLlamaModel"]
        self.text_config = AutoConfig.from_pretrained(model_dir / "llm")
        self.vision_config = AutoConfig.from_pretrained(model_dir / "vision_tower")
        self.mm_projector_type = raw.get("mm_projector_type") or projector_raw.get(
            "mm_projector_type", "mlp2x_gelu"
        )
        self.mm_vision_select_layer: int = raw.get("mm_vision_select_layer", -2)
        self.mm_vision_select_feature: str = raw.get("mm_vision_select_feature", "patch")
        self.image_aspect_ratio = raw.get("image_aspect_ratio")
        self.dtype = self.text_config.dtype
        self.tokenizer_dir = model_dir / "llm"
        self.processor_dir = model_dir / "vision_tower"

    def get_text_config(self):
        return self.text_config

    # VILA builds prompts in its own formats, never with the tokenizer's template.
    conversation_template = staticmethod(vila_conversation_template)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


class DownSample2x2(nn.Module):
    """VILA's ``DownSampleBlock``: the token grid (padded with zeros to an even side)
    with each 2x2 block concatenated into one token of 4x the channels, in VILA's order
    (which walks the merged grid column by column)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, num_tokens, c = x.shape
        side = math.isqrt(num_tokens)
        x = x.reshape(n, side, side, c)
        x = F.pad(x, (0, 0, 0, side % 2, 0, side % 2))
        side += side % 2
        x = x.reshape(n, side, side // 2, 2 * c).permute(0, 2, 1, 3)
        return x.reshape(n, (side // 2) ** 2, 4 * c)


class VilaProjector(nn.Module):
    """``layers`` is VILA's ``nn.Sequential``, index for index, so weights load by name."""

    def __init__(self, kind: str, in_size: int, out_size: int):
        super().__init__()
        if kind == "mlp2x_gelu":
            modules = [nn.Linear(in_size, out_size), nn.GELU(), nn.Linear(out_size, out_size)]
        elif kind == "mlp_downsample":
            modules = [
                DownSample2x2(),
                nn.LayerNorm(4 * in_size),
                nn.Linear(4 * in_size, out_size),
                nn.GELU(),
                nn.Linear(out_size, out_size),
            ]
        else:
            raise UnsupportedModelError(f"mm_projector_type {kind!r} is not supported")
        self.downsamples = kind == "mlp_downsample"
        self.layers = nn.Sequential(*modules)

    def num_tokens(self, num_features: int) -> int:
        if not self.downsamples:
            return num_features
        side = math.isqrt(num_features)
        if side * side != num_features:
            raise UnsupportedModelError("mlp_downsample needs a square grid of vision tokens")
        return ((side + 1) // 2) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class VilaForCausalLM(VisionLanguageModelBase):
    def __init__(self, config: VilaConfig):
        super().__init__()
        self.config = config
        feature = config.mm_vision_select_feature
        if feature not in ("patch", "cls_patch"):
            raise UnsupportedModelError(f"mm_vision_select_feature {feature!r} is not supported")
        self.vision_tower = VisionTower(config.vision_config, [config.mm_vision_select_layer])
        # SigLIP has no class token: there "patch" and "cls_patch" both keep every token.
        self.drops_class_token = feature == "patch" and self.vision_tower.has_class_token
        self.mm_projector = VilaProjector(
            config.mm_projector_type,
            config.vision_config.hidden_size,
            config.text_config.hidden_size,
        )
        self.language_model = language_model(config.text_config, "VILA")
        self.num_image_tokens = self.mm_projector.num_tokens(
            self.vision_tower.num_patches
            + int(self.vision_tower.has_class_token)
            - int(self.drops_class_token)
        )

    def checkpoint_name(self, name: str) -> str | None:
        """Our name for ``<subfolder>.<name in that subfolder's checkpoint>``."""
        for old, new in PREFIXES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        return tower_name(name, self.vision_tower)

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, 3, H, W]`` -> ``[num_images, num_image_tokens, hidden]``."""
        features = self.vision_tower(pixel_values)
        if self.drops_class_token:
            features = features[:, 1:]
        return self.mm_projector(features)
