"""Qwen2.5-VL's vision tower against transformers' ``visual`` module on the same random
weights and patches (fp32, CPU): window and full attention, 2-D rotary, the merger."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
)

from engine.models.qwen_vision import QwenVisionTower
from tests.engine.qwen2_5_vl_fixtures import VISION


@pytest.fixture(scope="module")
def towers():
    config = transformers.Qwen2_5_VLVisionConfig(**VISION)
    torch.manual_seed(0)
    reference = Qwen2_5_VisionTransformerPretrainedModel._from_config(config).float().eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.15)
    ours = QwenVisionTower(config)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


# Grids in patches: several windows with ragged edges, one window, one merged token.
@pytest.mark.parametrize("grid", [(6, 16), (10, 8), (4, 4), (2, 2)])
def test_tower_matches_transformers(towers, grid):
    ours, reference = towers
    grid_h, grid_w = grid
    patch_dim = 3 * VISION["temporal_patch_size"] * VISION["patch_size"] ** 2
    patches = torch.randn(1, grid_h // 2, grid_w // 2, 4, patch_dim)
    with torch.no_grad():
        theirs = reference(
            patches.flatten(0, 3), grid_thw=torch.tensor([[1, grid_h, grid_w]])
        ).pooler_output
        mine = ours(patches)
    assert mine.shape == (grid_h * grid_w // 4, VISION["out_hidden_size"])
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
