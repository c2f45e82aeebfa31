"""VILA1.5 with videos: ``num_video_frames`` frames sampled uniformly as VILA's code does
(llava/utils/media.py: ``np.round(np.linspace(0, frame_count - 1, num_frames))``), each
given as an image: the prompt is the one those frames make sent as image parts, and
greedy tokens equal the transformers-based reference. Models that take no videos
(LLaVA-1.5, text-only) refuse them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine import LLM, InvalidRequestError
from engine.multimodal.video_frames import uniform_indices
from tests.engine.test_vila import GREEDY, Reference, build_tiny_vila
from tests.engine.video_fixtures import decode_all, make_video, video_part
from tests.engine.vlm_fixtures import build_tiny_llava, image_part, text_part
from tests.engine.vlm_fixtures import data_url as image_url

NUM_VIDEO_FRAMES = 6
VIDEO = make_video(num_frames=23, width=64, height=48, fps=10, gop=5)


@pytest.fixture(scope="module")
def vila(tmp_path_factory):
    model_dir = build_tiny_vila(tmp_path_factory.mktemp("vila_video"), "mlp_downsample")
    config = json.loads((model_dir / "config.json").read_text())
    config["num_video_frames"] = NUM_VIDEO_FRAMES
    (model_dir / "config.json").write_text(json.dumps(config))
    return LLM(str(model_dir), kv_cache_memory=0.01), Reference(model_dir)


def test_uniform_indices_as_vila():
    assert uniform_indices(23, 6) == [0, 4, 9, 13, 18, 22]
    assert uniform_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # a short video repeats frames


def test_a_video_is_its_frames_as_images(vila):
    llm, _ = vila
    engine = llm.engine
    frames = [decode_all(VIDEO)[i] for i in uniform_indices(23, NUM_VIDEO_FRAMES)]
    as_images = [image_part(image_url(Image.fromarray(frame))) for frame in frames]
    video_ids, video_inputs = engine.chat_request(
        [{"role": "user", "content": [video_part(VIDEO), text_part("What happens?")]}]
    )
    image_ids, image_inputs = engine.chat_request(
        [{"role": "user", "content": [*as_images, text_part("What happens?")]}]
    )
    assert video_ids == image_ids
    assert video_ids.count(engine.vision.image_token_id) == NUM_VIDEO_FRAMES * 9
    assert len(video_inputs) == NUM_VIDEO_FRAMES
    for ours, theirs in zip(video_inputs, image_inputs):
        np.testing.assert_array_equal(ours.pixel_values.numpy(), theirs.pixel_values.numpy())
        assert ours.content_hash == theirs.content_hash


def test_greedy_tokens_match_reference(vila):
    llm, reference = vila
    messages = [
        {"role": "user", "content": [text_part("Watch:"), video_part(VIDEO), text_part("and?")]}
    ]
    token_ids, inputs = llm.engine.chat_request(messages)
    output = llm.chat(messages, GREEDY)
    image_token = llm.engine.vision.image_token_id
    assert output.token_ids == reference.greedy(token_ids, inputs, image_token)


def test_video_limits(vila):
    llm, _ = vila
    three = [{"role": "user", "content": [video_part(VIDEO), video_part(VIDEO), video_part(VIDEO)]}]
    with pytest.raises(InvalidRequestError, match="at most 2 videos"):
        llm.engine.chat_request(three)
    # A video's six frames count as one video, not as images.
    model_dir = llm.engine.model_dir
    two_images = LLM(str(model_dir), kv_cache_memory=0.01, limit_images_per_prompt=2)
    image = image_part(image_url(Image.fromarray(decode_all(VIDEO)[0])))
    _, inputs = two_images.engine.chat_request(
        [{"role": "user", "content": [image, video_part(VIDEO), image]}]
    )
    assert len(inputs) == 2 + NUM_VIDEO_FRAMES


def test_models_without_videos_refuse_them(tmp_path):
    llava = LLM(str(build_tiny_llava(tmp_path / "llava")), kv_cache_memory=0.01)
    with pytest.raises(InvalidRequestError, match="does not accept videos"):
        llava.engine.chat_request([{"role": "user", "content": [video_part(VIDEO)]}])
    text_only = LLM(None, kv_cache_memory=0.01)
    with pytest.raises(InvalidRequestError, match="does not accept videos"):
        text_only.engine.chat_request([{"role": "user", "content": [video_part(VIDEO)]}])
