"""A Qwen3-VL video over HTTP with the official client (data: and file: URLs): streamed
equal to unstreamed equal to the in-process engine, usage counting the video's tokens
and its timestamps' as the engine's prompt does; /v1/models says which models take
videos."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import LLM, SamplingParams
from server.cli import build_parser, media_kwargs
from tests.engine.qwen3_vl_fixtures import build_tiny_qwen3_vl
from tests.engine.video_fixtures import data_url, make_video
from tests.engine.vlm_fixtures import text_part
from tests.server.conftest import LiveServer, live_server

pytestmark = pytest.mark.timeout(120)

MAX_TOKENS = 8
VIDEO = make_video(num_frames=35, width=128, height=96, fps=10, gop=8)


def asking(url: str) -> list[dict]:
    video = {"type": "video_url", "video_url": {"url": url}}
    return [{"role": "user", "content": [video, text_part("What happens?")]}]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3_vl"))


def test_a_video_answered_as_in_process(qwen_dir: Path, tmp_path_factory) -> None:
    media_dir = tmp_path_factory.mktemp("media")
    (media_dir / "clip.mp4").write_bytes(VIDEO)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    local = LLM(str(qwen_dir), kv_cache_memory=0.05).chat(asking(data_url(VIDEO)), params)
    args = build_parser().parse_args(["serve", "--allowed-local-media-path", str(media_dir)])
    with live_server(qwen_dir, **media_kwargs(args)) as server:
        client = server.openai()
        for url in (data_url(VIDEO), (media_dir / "clip.mp4").as_uri()):
            request = dict(
                model=server.model,
                messages=asking(url),
                max_tokens=MAX_TOKENS,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            response = client.chat.completions.create(**request)
            streamed = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(**request, stream=True)
            )
            assert streamed == response.choices[0].message.content == local.text
            assert response.usage.prompt_tokens == len(local.prompt_token_ids)
        assert server.all_blocks_free()


def test_models_say_whether_videos_are_accepted(
    qwen_dir: Path, server: LiveServer, vlm_server: LiveServer
) -> None:
    """Beside accepts_images: Qwen3-VL takes videos; LLaVA-1.5 (images only) and a
    text-only model take none."""
    with live_server(qwen_dir) as qwen_server:
        for live, images, videos in (
            (qwen_server, True, True),
            (vlm_server, True, False),
            (server, False, False),
        ):
            [card] = live.openai().models.list().data
            assert (card.accepts_images, card.accepts_videos) == (images, videos)
            assert live.http().get(f"/v1/models/{live.model}").json()["accepts_videos"] is videos
