"""The Qwen-VL vision towers against transformers' ``visual`` modules on the same random
weights and patches (fp32, CPU). Qwen2.5-VL: window and full attention, 2-D rotary, the
merger. Qwen3-VL: learned positions resized to the grid, 2-D rotary, the merger and the
DeepStack mergers' features, in the order the language model takes them."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
)
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

from engine.models.qwen3_vision import Qwen3VisionTower
from engine.models.qwen_vision import QwenVisionTower
from tests.engine import qwen3_vl_fixtures
from tests.engine.qwen2_5_vl_fixtures import VISION


def random_towers(ours_class, reference_class, config):
    torch.manual_seed(0)
    reference = reference_class._from_config(config).float().eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.15)
    ours = ours_class(config)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.fixture(scope="module")
def towers():
    config = transformers.Qwen2_5_VLVisionConfig(**VISION)
    return random_towers(QwenVisionTower, Qwen2_5_VisionTransformerPretrainedModel, config)


@pytest.fixture(scope="module")
def qwen3_towers():
    config = transformers.Qwen3VLVisionConfig(**qwen3_vl_fixtures.VISION)
    return random_towers(Qwen3VisionTower, Qwen3VLVisionModel, config)


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


# Grids in patches against the 8 x 8 learned positions: finer, coarser, mixed, one token.
@pytest.mark.parametrize("grid", [(12, 10), (4, 6), (14, 6), (2, 2)])
def test_qwen3_tower_and_deepstack_match_transformers(qwen3_towers, grid):
    ours, reference = qwen3_towers
    vision = qwen3_vl_fixtures.VISION
    grid_h, grid_w = grid
    patch_dim = 3 * vision["temporal_patch_size"] * vision["patch_size"] ** 2
    patches = torch.randn(1, grid_h // 2, grid_w // 2, 4, patch_dim)
    with torch.no_grad():
        out = reference(patches.flatten(0, 3), grid_thw=torch.tensor([[1, grid_h, grid_w]]))
        mine = ours(patches)
    # The merger's features, then DeepStack's in tower-layer order (LM layer 0 takes the
    # first): transformers lists them in the order its layers produce them.
    theirs = torch.cat([out.pooler_output, *out.deepstack_features], dim=-1)
    assert mine.shape == (grid_h * grid_w // 4, 3 * vision["out_hidden_size"])
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
