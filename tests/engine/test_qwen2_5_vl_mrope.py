"""M-RoPE pieces against transformers' own: the prompt positions and delta of
engine/multimodal/mrope.py against ``Qwen2_5_VLModel.get_rope_index`` and
``Qwen3VLModel.get_rope_index``, and the rotary's per-token cos/sin against
``Qwen2_5_VLRotaryEmbedding`` and (interleaved) ``Qwen3VLTextRotaryEmbedding`` on the
same positions."""

from __future__ import annotations

import pytest
import torch
import transformers

from engine.layers.rotary import RotaryEmbedding, rope_parameters
from engine.multimodal.mrope import mrope_positions
from tests.engine import qwen3_vl_fixtures
from tests.engine.qwen2_5_vl_fixtures import VISION

IMAGE_TOKEN = 7
TEXT = dict(
    vocab_size=32,
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]),
)


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def model(request):
    if request.param == "qwen2_5_vl":
        config = transformers.Qwen2_5_VLConfig(
            text_config=TEXT, vision_config=VISION, image_token_id=IMAGE_TOKEN
        )
        return transformers.Qwen2_5_VLModel(config).eval()
    config = transformers.Qwen3VLConfig(
        text_config=dict(TEXT, head_dim=16),
        vision_config=qwen3_vl_fixtures.VISION,
        image_token_id=IMAGE_TOKEN,
    )
    return transformers.Qwen3VLModel(config).eval()


# (text before, grid height, grid width in merged tokens) per image, then trailing text.
LAYOUTS = {
    "one": ([(5, 3, 8)], 4),
    "wide-then-tall": ([(2, 5, 7), (3, 8, 3)], 6),
    "image-first-and-last": ([(0, 2, 2), (4, 1, 9)], 0),
    "square": ([(1, 4, 4)], 1),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_prompt_positions_match_get_rope_index(model, name):
    images, trailing = LAYOUTS[name]
    token_ids, starts, grids = [], [], []
    for text, height, width in images:
        token_ids += [1] * text
        starts.append(len(token_ids))
        token_ids += [IMAGE_TOKEN] * (height * width)
        grids.append((height, width))
    token_ids += [1] * trailing
    input_ids = torch.tensor([token_ids])
    theirs, delta = model.get_rope_index(
        input_ids,
        mm_token_type_ids=(input_ids == IMAGE_TOKEN).int(),
        image_grid_thw=torch.tensor([[1, 2 * h, 2 * w] for h, w in grids]),
    )
    ours = mrope_positions(len(token_ids), starts, grids)
    assert torch.equal(torch.from_numpy(ours.positions), theirs[:, 0])
    assert ours.delta == int(delta)


def test_rotary_tables_match_transformers():
    config = transformers.Qwen2_5_VLTextConfig(**TEXT, max_position_embeddings=64)
    reference = transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLRotaryEmbedding(config)
    ours = RotaryEmbedding(16, 64, rope_parameters(config))
    ours.init_buffers(torch.device("cpu"))
    positions = torch.randint(0, 64, (3, 20))
    cos, sin = ours.mrope_tables(positions)
    their_cos, their_sin = reference(torch.zeros(1), positions[:, None])
    # transformers repeats the 8 frequencies for the rotate_half layout: [.., 16]
    torch.testing.assert_close(cos, their_cos[0, :, :8], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, their_sin[0, :, :8], rtol=0, atol=1e-6)
    # Equal streams are plain RoPE.
    text = torch.arange(20)
    cos, _ = ours.mrope_tables(text.expand(3, -1))
    torch.testing.assert_close(cos, ours.cos[text], rtol=0, atol=0)


# (head_dim, mrope_section): the tiny models' and the Hub's Qwen3-VL (head_dim 128).
@pytest.mark.parametrize("head_dim, section", [(16, [2, 3, 3]), (128, [24, 20, 20])])
def test_interleaved_rotary_tables_match_qwen3_vl(head_dim, section):
    rope = dict(rope_type="default", rope_theta=5e6, mrope_section=section, mrope_interleaved=True)
    config = transformers.Qwen3VLTextConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=64,
        rope_parameters=rope,
    )
    reference = transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding(config)
    ours = RotaryEmbedding(head_dim, 64, rope_parameters(config))
    ours.init_buffers(torch.device("cpu"))
    positions = torch.stack([torch.randperm(64)[:20] for _ in range(3)])
    cos, sin = ours.mrope_tables(positions)
    their_cos, their_sin = reference(torch.zeros(1), positions[:, None])
    torch.testing.assert_close(cos, their_cos[0, :, : head_dim // 2], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, their_sin[0, :, : head_dim // 2], rtol=0, atol=1e-6)
