"""Our vision towers against transformers' CLIP and SigLIP vision models: the hidden
states of the layers VLMs read, on the same random weights, in fp32."""

from __future__ import annotations

import pytest
import torch
import transformers

from engine.errors import UnsupportedModelError
from engine.models.vision import VisionTower

TOWER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=42,
    patch_size=14,
)
MODELS = {
    "clip": (transformers.CLIPVisionConfig, transformers.CLIPVisionModel),
    "siglip": (transformers.SiglipVisionConfig, transformers.SiglipVisionModel),
}


def towers(kind: str, feature_layers: list[int]):
    config_cls, model_cls = MODELS[kind]
    config = config_cls(**TOWER)
    torch.manual_seed(0)
    reference = model_cls(config).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.15)
    ours = VisionTower(config, feature_layers)
    state = {k.removeprefix("vision_model."): v for k, v in reference.state_dict().items()}
    missing, _ = ours.load_state_dict(state, strict=False)
    assert not missing
    return ours.eval(), reference


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("feature_layers", [[-2], [-1], [0, -1], [1]])
def test_hidden_states_match_transformers(kind, feature_layers):
    ours, reference = towers(kind, feature_layers)
    pixels = torch.randn(2, 3, 42, 42, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        states = reference(pixels, output_hidden_states=True).hidden_states
        expected = torch.cat([states[i] for i in feature_layers], dim=-1)
        torch.testing.assert_close(ours(pixels), expected, atol=1e-5, rtol=1e-5)
    assert len(ours.encoder.layers) == max(i % 4 for i in feature_layers)
    assert ours.num_patches == 9 and ours.has_class_token == (kind == "clip")


def test_unknown_tower_and_activation_are_refused():
    with pytest.raises(UnsupportedModelError, match="vision tower"):
        VisionTower(transformers.Dinov2Config(), [-1])
    with pytest.raises(UnsupportedModelError, match="activation"):
        VisionTower(transformers.CLIPVisionConfig(**TOWER, hidden_act="relu6"), [-1])
