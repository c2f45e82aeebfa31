"""NVILA and NVILA-Lite against a reference assembled from transformers' SiglipVisionModel
and Qwen2ForCausalLM with NVILA's tiling, S2 merge and projectors written out
(tests/engine/nvila_fixtures.py), on tiny random checkpoints in NVILA's released layout,
in fp32 on CPU. The reference's prompts are NVILA's text, written here by hand."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from engine import LLM, SamplingParams
from engine.errors import UnsupportedModelError
from engine.models.vila import DownSample2x2, VilaProjector
from tests.engine.nvila_fixtures import (
    SCALES,
    SYSTEM,
    TILE,
    NvilaReference,
    build_tiny_nvila,
    lite_tiles,
    merge_rows,
    s2_tiles,
)
from tests.engine.test_llava import chunked_prefill_logits
from tests.engine.test_vila import merge_2x2
from tests.engine.vlm_fixtures import data_url, image_part, random_image, text_part

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
# Odd sizes: wide, tall, and near square, so grids of several shapes come up.
IMAGES = [random_image(seed, size) for seed, size in enumerate([(97, 45), (45, 131), (83, 77)])]
URLS = [data_url(image) for image in IMAGES]


@pytest.fixture(scope="module", params=["lite", "s2"])
def nvila(request, tmp_path_factory):
    lite = request.param == "lite"
    model_dir = build_tiny_nvila(tmp_path_factory.mktemp(request.param), lite)
    llm = LLM(str(model_dir), kv_cache_memory=0.01, max_num_batched_tokens=64)
    return llm, NvilaReference(model_dir)


def user(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n"


def assistant(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


def one_image(lite: bool):
    """An image then text, alone in the conversation: tiled."""
    messages = [{"role": "user", "content": [image_part(URLS[0]), text_part("What is this?")]}]
    image_text = "<image>\n" * len(lite_tiles(IMAGES[0])) if lite else "<image>"
    return messages, SYSTEM + user(image_text + "What is this?"), IMAGES[:1]


def two_images(lite: bool):
    """Two images of different aspect ratios in one message: one tile each, parts
    joined with nothing between."""
    parts = [text_part("Compare "), image_part(URLS[0]), text_part(" and"), image_part(URLS[1])]
    messages = [{"role": "user", "content": parts}]
    return messages, SYSTEM + user("Compare <image> and<image>"), IMAGES[:2]


def two_turns(lite: bool):
    """An image in each turn (two in the conversation, so neither is tiled), a system
    prompt of the user's own, and text around each image stripped."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [image_part(URLS[1]), text_part(" What is it? ")]},
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": [text_part("And this?\n"), image_part(URLS[2])]},
    ]
    prompt = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        + user("<image> What is it?")
        + assistant("A picture.")
        + user("And this?\n<image>")
    )
    return messages, prompt, IMAGES[1:]


CONVERSATIONS = [one_image, two_images, two_turns]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=lambda c: c.__name__)
def test_logits_and_greedy_tokens_match_reference(nvila, conversation):
    llm, reference = nvila
    messages, prompt, images = conversation(reference.lite)
    engine = llm.engine
    token_ids, inputs = engine.chat_request(messages)
    ours = chunked_prefill_logits(engine, token_ids, inputs, chunk=7)
    units = reference.image_units(images)
    theirs = reference.logits(prompt + "<|im_start|>assistant\n", units, [])[-1]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    output = llm.chat(messages, GREEDY)
    assert output.prompt_token_ids == token_ids
    expected = reference.greedy(prompt + "<|im_start|>assistant\n", units, GREEDY.max_tokens)
    assert output.token_ids == expected


@pytest.mark.parametrize("output_scale", [None, 1], ids=["default-first-scale", "second-scale"])
def test_s2_features_resized_to_another_scale_match_reference(tmp_path, output_scale):
    """``s2_resize_output_to_scale_idx`` short of the last scale (VILA's default, 0, when
    the config leaves it out): every scale's map resized to that scale's, re-tiled into
    its square grid."""
    model_dir = build_tiny_nvila(tmp_path / "nvila", lite=False, output_scale=output_scale)
    llm = LLM(str(model_dir), kv_cache_memory=0.01)
    reference = NvilaReference(model_dir)
    messages, prompt, images = one_image(lite=False)
    token_ids, _ = llm.engine.chat_request(messages)
    k = SCALES[output_scale or 0] // TILE
    tokens_per_tile = (TILE // 14 // 2) ** 2  # 14 px patches, 2x2 merged
    assert token_ids.count(llm.engine.vision.image_token_id) == k * k * tokens_per_tile
    units = reference.image_units(images)
    expected = reference.greedy(prompt + "<|im_start|>assistant\n", units, GREEDY.max_tokens)
    assert llm.chat(messages, GREEDY).token_ids == expected


def test_media_tokens_are_added_to_the_tokenizer(nvila):
    llm, _ = nvila
    tokenizer = llm.engine.tokenizer
    saved = len(type(tokenizer).from_pretrained(llm.engine.model_dir / "llm"))
    assert tokenizer.convert_tokens_to_ids(["<image>", "<vila/video>"]) == [saved, saved + 1]
    assert llm.engine.vision.image_token_id == saved


@pytest.mark.parametrize("size", [(97, 45), (45, 131), (83, 77), (13, 200), (301, 299)])
def test_tiles_and_pixels_match_nvila_processing(nvila, size):
    llm, reference = nvila
    image = random_image(7, size)
    [message], inputs = llm.engine.vision.flatten(
        [{"role": "user", "content": [image_part(data_url(image))]}]
    )
    if reference.lite:
        expected = reference.pixels(lite_tiles(image))
        assert message["content"] == "<image>\n" * (len(expected) - 1) + "<image>"
        ours = torch.stack([tile.pixel_values for tile in inputs])
    else:
        tiles, (rows, cols) = s2_tiles(image)
        expected = reference.pixels(tiles)
        [canvas] = [tile.pixel_values for tile in inputs]
        assert canvas.shape[:2] == (rows + -(-5 // cols), cols)
        lower = canvas[:-rows].flatten(0, 1)
        assert not lower[5:].any()
        ours = torch.cat([lower[:5], canvas[-rows:].flatten(0, 1)])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_an_image_among_several_is_one_resized_tile(nvila):
    llm, reference = nvila
    _, inputs = llm.engine.vision.flatten(two_images(reference.lite)[0])
    expected = reference.pixels(IMAGES[:2])
    torch.testing.assert_close(torch.stack([i.pixel_values for i in inputs]), expected)


def test_nvila_merges_row_by_row_and_vila15_column_by_column():
    """Both call it ``mlp_downsample``: NVILA's code (the block with its final permute)
    walks the merged grid row by row, VILA1.5's column by column; the config's family
    picks one. Odd grids are zero-padded either way."""
    x = torch.randn(2, 25, 8)
    nvila = VilaProjector("mlp_downsample", 8, 16, row_order=True).layers[0]
    vila15 = VilaProjector("mlp_downsample", 8, 16).layers[0]
    assert isinstance(vila15, DownSample2x2)
    torch.testing.assert_close(nvila(x), merge_rows(x, 2), atol=0, rtol=0)
    torch.testing.assert_close(vila15(x), merge_2x2(x), atol=0, rtol=0)
    assert not torch.equal(nvila(x), vila15(x))
    lite = VilaProjector("mlp_downsample_3x3_fix", 8, 16).layers[0]
    torch.testing.assert_close(lite(x[:1, :16]), merge_rows(x[:1, :16], 3), atol=0, rtol=0)


def test_an_inconsistent_s2_config_is_refused_by_name(tmp_path):
    model_dir = build_tiny_nvila(tmp_path / "nvila", lite=False)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(mm_hidden_size=config["mm_hidden_size"] // 3)
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="mm_hidden_size"):
        LLM(str(model_dir), kv_cache_memory=0.01)


def test_too_many_images_are_refused(nvila):
    llm, _ = nvila
    image = image_part(data_url(Image.new("RGB", (20, 20))))
    limit = llm.engine.config.image_limits.max_images
    with pytest.raises(ValueError, match=f"at most {limit} images"):
        llm.engine.chat_request([{"role": "user", "content": [image] * (limit + 1)}])
