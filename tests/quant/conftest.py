"""Tiny random models that quantize like real LLMs, and their quantized checkpoints.

Real LLM activations have a few input channels far larger than the rest; that is what
AWQ exploits. We plant them by scaling a few channels of every norm weight, and draw the
linear weights at a realistic scale (std 0.05, not conftest's peaked 0.15).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.quant.quantizer import QuantizeConfig, quantize
from tests.conftest import build_tiny_model, load_reference

GROUP_SIZE = 32
NUM_OUTLIER_CHANNELS = 4
OUTLIER_GAIN = 20.0
WEIGHT_STD = 0.05
# Multi-head attention, so the v_proj -> o_proj scale group applies too.
OUTLIER_SHAPE = dict(
    hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4
)


def build_outlier_model(out_dir: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    build_tiny_model(out_dir, arch, seed=seed, **{**OUTLIER_SHAPE, **overrides})
    model = load_reference(out_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed_tokens" not in name and "lm_head" not in name:
                param.normal_(0, WEIGHT_STD, generator=generator)
            elif name.endswith("layernorm.weight"):
                channels = torch.randperm(param.numel(), generator=generator)
                param[channels[:NUM_OUTLIER_CHANNELS]] *= OUTLIER_GAIN
    model.save_pretrained(out_dir)
    return out_dir


def calib_ids(num_samples: int = 16, seq_len: int = 64, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, 2000, (num_samples, seq_len), generator=generator)


@pytest.fixture(scope="session")
def outlier_llama(tmp_path_factory) -> Path:
    return build_outlier_model(tmp_path_factory.mktemp("outlier-llama"))


@pytest.fixture(scope="session")
def quantized_factory(tmp_path_factory):
    """``factory(model_dir, method="awq", clip=True) -> Path``, cached per arguments."""
    built: dict = {}

    def factory(model_dir: Path, method: str = "awq", clip: bool = True) -> Path:
        key = (model_dir, method, clip)
        if key not in built:
            out = tmp_path_factory.mktemp("quantized") / f"{method}-{clip}"
            config = QuantizeConfig(method=method, group_size=GROUP_SIZE, clip=clip)
            built[key] = quantize(model_dir, out, config, calib_ids=calib_ids())
        return built[key]

    return factory
