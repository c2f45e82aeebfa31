"""VILA1.5 and NVILA (NVIDIA's ``llava_llama``): a SigLIP tower, an MLP projector
(``mlp2x_gelu``, or a ``mlp_downsample*`` one, which first merges each 2x2 or 3x3 block of
patches into one token) and a Llama or Qwen2 language model, each saved in its own
subfolder: ``llm/``, ``vision_tower/``, ``mm_projector/``.

transformers cannot read the top-level config (its ``model_type`` is unknown there), so
``VilaConfig`` assembles it from the three parts. Weights load under the subfolder's name
as a prefix (see ``engine.weights.checkpoint_entries``); the text path and the way image
features enter it are LLaVA's. NVILA (its config's ``image_aspect_ratio`` is ``dynamic``
or ``dynamic_s2``) is engine/models/nvila.py.
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
from engine.models.vila_templates import (
    nvila_conversation_template,
    vila_conversation_template,
)
from engine.models.vision import VisionTower

# Subfolder-prefixed checkpoint names -> ours (the projector's are ours already).
PREFIXES = [
    ("llm.model.", "language_model.model."),
    ("llm.lm_head.", "language_model.lm_head."),
    ("vision_tower.vision_model.", "vision_tower."),
]


# ``image_aspect_ratio`` of NVILA's two families: tiles (NVILA-Lite), tiles at several
# scales (NVILA); VILA1.5's are "resize" and "pad".
NVILA_ASPECT_RATIOS = ("dynamic", "dynamic_s2")
# Media tokens NVILA's code adds to the llm/ tokenizer at load (llava/constants.py), in order.
NVILA_MEDIA_TOKENS = ("<image>", "<vila/video>")


class VilaConfig:
    """The parts of VILA's config the engine reads, shaped like a LLaVA config
    (``text_config``, ``vision_config``, ``get_text_config()``), plus where the
    tokenizer and the image preprocessor live. Keys a checkpoint leaves out take VILA's
    defaults (llava/model/configuration_llava.py)."""

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
        self.text_config = AutoConfig.from_pretrained(model_dir / "llm")
        self.vision_config = AutoConfig.from_pretrained(model_dir / "vision_tower")
        self.mm_projector_type = raw.get("mm_projector_type") or projector_raw.get(
            "mm_projector_type", "mlp2x_gelu"
        )
        self.mm_vision_select_layer: int = raw.get("mm_vision_select_layer", -2)
        self.mm_vision_select_feature: str = raw.get("mm_vision_select_feature", "patch")
        self.image_aspect_ratio = raw.get("image_aspect_ratio")
        # Frames a video is sampled to (llava/utils/media.py); None: videos are refused.
        self.num_video_frames: int | None = raw.get("num_video_frames")
        self.is_nvila = self.image_aspect_ratio in NVILA_ASPECT_RATIOS
        # NVILA goes by its own class name here: the Hub's config says LlavaLlamaModel too.
        self.architectures = ["NVILA"] if self.is_nvila else ["LlavaLlamaModel"]
        self.min_tiles: int = raw.get("min_tiles", 1)
        self.max_tiles: int = raw.get("max_tiles", 12)
        self.s2_scales: list[int] = _scales(raw) if self.image_aspect_ratio == "dynamic_s2" else []
        self.s2_resize_output_to_scale_idx: int = raw.get("s2_resize_output_to_scale_idx", 0)
        self.mm_hidden_size: int = raw.get("mm_hidden_size", self.vision_config.hidden_size)
        self.chat_template: str | None = raw.get("chat_template")
        # NVILA's code adds its media tokens to the tokenizer; VILA1.5's saved them.
        self.added_tokens = NVILA_MEDIA_TOKENS if self.is_nvila else ()
        self.dtype = self.text_config.dtype
        self.tokenizer_dir = model_dir / "llm"
        self.processor_dir = model_dir / "vision_tower"

    def get_text_config(self):
        return self.text_config

    def conversation_template(self, tokenizer) -> str | None:
        """VILA builds prompts in its own formats, never with the tokenizer's template;
        NVILA uses the one its config names (None: llm/'s own)."""
        if self.is_nvila:
            return nvila_conversation_template(self.chat_template)
        return vila_conversation_template(tokenizer)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


def _scales(raw: dict) -> list[int]:
    """``s2_scales`` ("448,896,1344"), ascending, each a multiple of the first."""
    try:
        scales = sorted(int(s) for s in str(raw["s2_scales"]).split(","))
    except (KeyError, ValueError):
        raise ModelLoadError('a dynamic_s2 config needs s2_scales, e.g. "448,896,1344"') from None
    if any(scale % scales[0] for scale in scales):
        raise UnsupportedModelError(f"s2_scales {scales} are not multiples of the first")
    return scales


class DownSample2x2(nn.Module):
    """VILA1.5's ``DownSampleBlock``: the token grid (padded with zeros to an even side)
    with each 2x2 block concatenated into one token of 4x the channels, in VILA1.5's
    order (which walks the merged grid column by column)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, num_tokens, c = x.shape
        side = math.isqrt(num_tokens)
        x = x.reshape(n, side, side, c)
        x = F.pad(x, (0, 0, 0, side % 2, 0, side % 2))
        side += side % 2
        x = x.reshape(n, side, side // 2, 2 * c).permute(0, 2, 1, 3)
        return x.reshape(n, (side // 2) ** 2, 4 * c)


class DownSampleRows(nn.Module):
    """NVILA's downsample blocks (``DownSampleBlock`` since NVILA, and the ``*_fix``
    ones): the token grid zero-padded to a multiple of ``k`` on each side, each k x k
    block's tokens (row by row) concatenated into one, the merged grid read row by row."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, num_tokens, c = x.shape
        k, side = self.k, math.isqrt(num_tokens)
        pad = -side % k
        x = F.pad(x.reshape(n, side, side, c), (0, 0, 0, pad, 0, pad))
        m = (side + pad) // k
        x = x.reshape(n, m, k, m, k, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, m * m, k * k * c)


# Projector kind -> the side of the blocks of patches it merges into one token.
MERGED_BLOCK_SIDES = {
    "mlp2x_gelu": 1,
    "mlp_downsample": 2,
    "mlp_downsample_2x2_fix": 2,
    "mlp_downsample_3x3_fix": 3,
}


class VilaProjector(nn.Module):
    """``layers`` is VILA's ``nn.Sequential``, index for index, so weights load by name.
    ``row_order``: ``mlp_downsample`` merges as NVILA's code does (VILA1.5's otherwise)."""

    def __init__(self, kind: str, in_size: int, out_size: int, row_order: bool = False):
        super().__init__()
        if kind not in MERGED_BLOCK_SIDES:
            raise UnsupportedModelError(f"mm_projector_type {kind!r} is not supported")
        self.merge = MERGED_BLOCK_SIDES[kind]
        if self.merge == 1:
            modules = [nn.Linear(in_size, out_size), nn.GELU(), nn.Linear(out_size, out_size)]
        elif self.merge == 2:
            column_order = kind == "mlp_downsample" and not row_order
            modules = [
                DownSample2x2() if column_order else DownSampleRows(2),
                nn.LayerNorm(4 * in_size),
                nn.Linear(4 * in_size, out_size),
                nn.GELU(),
                nn.Linear(out_size, out_size),
            ]
        else:
            modules = [
                DownSampleRows(3),
                nn.LayerNorm(9 * in_size),
                nn.Linear(9 * in_size, 3 * in_size),
                nn.GELU(),
                nn.LayerNorm(3 * in_size),
                nn.Linear(3 * in_size, out_size),
                nn.GELU(),
                nn.Linear(out_size, out_size),
            ]
        self.layers = nn.Sequential(*modules)

    def num_tokens(self, num_features: int) -> int:
        side = math.isqrt(num_features)
        if self.merge > 1 and side * side != num_features:
            raise UnsupportedModelError("mlp_downsample needs a square grid of vision tokens")
        return num_features if self.merge == 1 else (-(-side // self.merge)) ** 2

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
            config.vision_config.hidden_size * max(1, len(config.s2_scales)),
            config.text_config.hidden_size,
            row_order=config.is_nvila,
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
