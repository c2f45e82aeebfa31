"""NVILA-Lite over HTTP with the official client: a tiled image, two images (one tile
each) and a video, streamed equal to unstreamed equal to the in-process engine, with the
same prompt length; a video without num_video_frames in the config is a 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from engine import LLM, SamplingParams
from tests.engine.nvila_fixtures import build_tiny_nvila
from tests.engine.test_nvila import URLS
from tests.engine.video_fixtures import data_url, make_video
from tests.engine.vlm_fixtures import image_part, text_part
from tests.server.conftest import LiveServer, live_server

pytestmark = pytest.mark.timeout(120)

MAX_TOKENS = 6
VIDEO_PART = {"type": "video_url", "video_url": {"url": data_url(make_video(num_frames=9))}}
CONVERSATIONS = {
    "tiled-image": [{"role": "user", "content": [image_part(URLS[0]), text_part("What?")]}],
    "two-images": [
        {"role": "user", "content": [image_part(URLS[0]), text_part("or"), image_part(URLS[1])]}
    ],
    "video": [{"role": "user", "content": [VIDEO_PART, text_part("What happens?")]}],
}


@pytest.fixture(scope="module")
def nvila_dir(tmp_path_factory) -> Path:
    model_dir = build_tiny_nvila(tmp_path_factory.mktemp("nvila_http"), lite=True)
    config = json.loads((model_dir / "config.json").read_text())
    config["num_video_frames"] = 3
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


@pytest.fixture(scope="module")
def nvila_server(nvila_dir) -> Iterator[LiveServer]:
    with live_server(nvila_dir) as live:
        yield live


def create(server: LiveServer, messages: list[dict], stream: bool = False):
    return server.openai().chat.completions.create(
        model=server.model,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=stream,
        extra_body={"ignore_eos": True},
    )


def test_streamed_equals_unstreamed_equals_in_process(nvila_server: LiveServer, nvila_dir):
    llm = LLM(str(nvila_dir), kv_cache_memory=0.05)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    for messages in CONVERSATIONS.values():
        local = llm.chat(messages, params)
        response = create(nvila_server, messages)
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in create(nvila_server, messages, stream=True)
        )
        assert streamed == response.choices[0].message.content == local.text
        assert response.usage.prompt_tokens == len(local.prompt_token_ids)
    assert nvila_server.all_blocks_free()


def test_a_video_without_num_video_frames_is_a_400(tmp_path):
    model_dir = build_tiny_nvila(tmp_path / "nvila", lite=False)
    config = json.loads((model_dir / "config.json").read_text())
    del config["num_video_frames"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with live_server(model_dir) as server, pytest.raises(openai.BadRequestError) as caught:
        create(server, CONVERSATIONS["video"])
    assert "does not accept videos" in caught.value.body["message"]
