"""NVILA and NVILA-Lite with videos: ``num_video_frames`` frames sampled uniformly
(llava/utils/media.py), each one resized tile; against the reference's
BasicVideoEncoder (each frame's features then "\\n"'s embedding, one ``<vila/video>``
unit), on the frames of a full decode. A video does not count towards the one image
NVILA tiles."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from engine import LLM, InvalidRequestError
from engine.multimodal.video_frames import uniform_indices
from tests.engine.nvila_fixtures import SYSTEM, NvilaReference, build_tiny_nvila, lite_tiles
from tests.engine.test_nvila import GREEDY, IMAGES, URLS, user
from tests.engine.video_fixtures import data_url, decode_all, make_video
from tests.engine.vlm_fixtures import image_part, text_part

NUM_FRAMES = 4
VIDEO = make_video(num_frames=13, width=64, height=48, fps=10, gop=5)
FRAMES = [Image.fromarray(decode_all(VIDEO)[i]) for i in uniform_indices(13, NUM_FRAMES)]
VIDEO_PART = {"type": "video_url", "video_url": {"url": data_url(VIDEO)}}


@pytest.fixture(scope="module", params=["lite", "s2"])
def nvila(request, tmp_path_factory):
    lite = request.param == "lite"
    model_dir = build_tiny_nvila(tmp_path_factory.mktemp(f"{request.param}_video"), lite)
    config = json.loads((model_dir / "config.json").read_text())
    config["num_video_frames"] = NUM_FRAMES
    (model_dir / "config.json").write_text(json.dumps(config))
    return LLM(str(model_dir), kv_cache_memory=0.01, max_num_batched_tokens=64), NvilaReference(
        model_dir
    )


def test_a_video_matches_the_reference(nvila):
    llm, reference = nvila
    messages = [{"role": "user", "content": [VIDEO_PART, text_part("What happens?")]}]
    token_ids, inputs = llm.engine.chat_request(messages)
    assert len(inputs) == NUM_FRAMES
    prompt = SYSTEM + user("<vila/video>What happens?") + "<|im_start|>assistant\n"
    expected = reference.greedy(prompt, [reference.video_unit(FRAMES)], GREEDY.max_tokens)
    output = llm.chat(messages, GREEDY)
    assert output.prompt_token_ids == token_ids
    assert output.token_ids == expected


def test_an_image_beside_a_video_is_still_tiled(nvila):
    llm, reference = nvila
    messages = [{"role": "user", "content": [image_part(URLS[0]), VIDEO_PART, text_part("Same?")]}]
    image_text = "<image>\n" * len(lite_tiles(IMAGES[0])) if reference.lite else "<image>"
    prompt = SYSTEM + user(image_text + "<vila/video>Same?") + "<|im_start|>assistant\n"
    units = reference.media(IMAGES[0], tiled=True) + [reference.video_unit(FRAMES)]
    assert llm.chat(messages, GREEDY).token_ids == reference.greedy(prompt, units, 6)


def test_a_video_longer_than_the_context_is_refused_before_fetching(nvila, monkeypatch):
    """num_video_frames frames of one tile and "\\n" each: a context that holds no more
    than the video's tokens refuses it before the video is fetched or decoded."""
    llm, _ = nvila
    messages = [{"role": "user", "content": [VIDEO_PART, text_part("What happens?")]}]
    with_video = llm.engine.chat_request(messages)[0]
    without = llm.engine.chat_request([{"role": "user", "content": "What happens?"}])[0]
    num_video_tokens = len(with_video) - len(without)
    short = LLM(str(llm.engine.model_dir), kv_cache_memory=0.01, max_model_len=num_video_tokens)

    def fetch(*args):
        raise AssertionError("fetched a video the context cannot hold")

    monkeypatch.setattr("engine.multimodal.video_frames.video_bytes", fetch)
    expected = f"takes {num_video_tokens} tokens, more than the context of {num_video_tokens}"
    with pytest.raises(InvalidRequestError, match=expected):
        short.engine.chat_request(messages)
