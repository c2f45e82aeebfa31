"""Videos over HTTP with the official client: a Qwen2.5-VL video_url (data: and file:
URLs) answered as the in-process engine answers it, streamed and not; 400s for a
truncated video (naming the part), one over --max-video-frames or --max-video-bytes
(refused before any frame is decoded), and a video on models that take none."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from client.chat import image_data_url
from client.chat import main as chat_main
from engine import LLM, SamplingParams
from server.cli import build_parser, media_kwargs
from server.cli import main as cli_main
from tests.engine.qwen2_5_vl_fixtures import build_tiny_qwen2_5_vl
from tests.engine.video_fixtures import data_url, make_video
from tests.engine.vlm_fixtures import text_part
from tests.server.conftest import API_KEY, LiveServer, live_server

pytestmark = pytest.mark.timeout(120)

MAX_TOKENS = 8
VIDEO = make_video(num_frames=40, width=112, height=84, fps=10, gop=8)


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def asking(url: str) -> list[dict]:
    return [{"role": "user", "content": [text_part("What happens?"), video_part(url)]}]


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    (folder / "clip.mp4").write_bytes(VIDEO)
    return folder


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen2_5_vl"))


@pytest.fixture(scope="module")
def qwen_server(qwen_dir: Path, media_dir: Path) -> Iterator[LiveServer]:
    # The CLI's flags, as `edgechat serve` passes them: 39 frames refuses the 40 of VIDEO.
    args = build_parser().parse_args(
        ["serve", "--max-video-frames", "39", "--allowed-local-media-path", str(media_dir)]
    )
    with live_server(qwen_dir, **media_kwargs(args)) as live:
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


def refused(server: LiveServer, messages: list[dict]) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        create(server, messages)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    return error


def test_a_video_answered_as_in_process(qwen_dir: Path, media_dir: Path) -> None:
    short = make_video(num_frames=20, width=112, height=84, fps=10, gop=8)
    llm = LLM(str(qwen_dir), kv_cache_memory=0.05)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    local = llm.chat(asking(data_url(short)), params)
    args = build_parser().parse_args(["serve", "--allowed-local-media-path", str(media_dir)])
    (media_dir / "short.mp4").write_bytes(short)
    with live_server(qwen_dir, **media_kwargs(args)) as server:
        for url in (data_url(short), (media_dir / "short.mp4").as_uri()):
            response = create(server, asking(url))
            streamed = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in create(server, asking(url), stream=True)
            )
            assert streamed == response.choices[0].message.content == local.text
            assert response.usage.prompt_tokens == len(local.prompt_token_ids)
        assert server.all_blocks_free()


def test_a_truncated_video_is_a_400_naming_the_part(qwen_server: LiveServer) -> None:
    error = refused(qwen_server, asking(data_url(VIDEO[: len(VIDEO) // 2])))
    assert "messages[0].content[1]: cannot decode a video" in error["message"]


def test_a_video_over_max_video_frames_is_a_400(qwen_server: LiveServer, media_dir: Path):
    for url in (data_url(VIDEO), (media_dir / "clip.mp4").as_uri()):
        error = refused(qwen_server, asking(url))
        assert "40 frames is longer than the limit of 39 frames" in error["message"]


def test_a_video_over_max_video_bytes_is_a_400(qwen_dir: Path) -> None:
    args = build_parser().parse_args(["serve", "--max-video-bytes", str(len(VIDEO) - 1)])
    with live_server(qwen_dir, **media_kwargs(args)) as server:
        error = refused(server, asking(data_url(VIDEO)))
        assert "--max-video-bytes" in error["message"]


def test_models_without_videos_refuse_them(server: LiveServer, vlm_server: LiveServer) -> None:
    """A text-only model (the server's own check) and LLaVA-1.5 (the engine's)."""
    for live in (server, vlm_server):
        error = refused(live, asking(data_url(VIDEO)))
        assert "does not accept videos" in error["message"]


def test_edgechat_generate_takes_a_video(qwen_dir: Path, media_dir: Path, capsys) -> None:
    path = media_dir / "clip.mp4"
    argv = ["generate", "--model", str(qwen_dir), "--prompt", "What happens?"]
    argv += ["--max-tokens", "4", "--kv-cache-memory", "0.05", "--video", str(path)]
    assert cli_main(argv) == 0
    llm = LLM(str(qwen_dir), kv_cache_memory=0.05)
    parts = [video_part(image_data_url(path)), text_part("What happens?")]
    expected = llm.chat([{"role": "user", "content": parts}], SamplingParams(4, temperature=0))
    assert capsys.readouterr().out == expected.text + "\n"
    assert image_data_url(path).startswith("data:video/mp4;base64,")


def test_edgechat_chat_sends_a_video(qwen_dir: Path, media_dir: Path) -> None:
    """`edgechat chat --video FILE`: the first message carries it as a video_url part."""
    path = media_dir / "short.mp4"
    path.write_bytes(make_video(num_frames=20, width=112, height=84, fps=10, gop=8))
    llm = LLM(str(qwen_dir), kv_cache_memory=0.05)
    message = [{"role": "user", "content": [text_part("Hi"), video_part(image_data_url(path))]}]
    expected = llm.chat(message, SamplingParams(3, temperature=0)).text
    args = build_parser().parse_args(["chat", "--video", str(path), "--max-tokens", "3"])
    assert args.video == [str(path)]
    with live_server(qwen_dir) as server:
        out = io.StringIO()
        replies = iter(["Hi", "/exit"])
        status = chat_main(
            server.url,
            API_KEY,
            images=args.video,
            temperature=0,
            max_tokens=3,
            read=lambda prompt: next(replies),
            out=out,
        )
        assert status == 0 and "tok/s" in out.getvalue() and "server error" not in out.getvalue()
        assert f"assistant> {expected}" in out.getvalue()
