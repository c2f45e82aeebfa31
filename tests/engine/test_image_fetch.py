"""Image URLs that are not inline: http(s) fetched from a local test server (redirects,
errors, the deadline and the byte limit), file: URLs confined to the allowed directory,
and the image limits as engine config and command-line flags."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from engine import LLM, EngineConfig, EngineError, InvalidRequestError, SamplingParams
from engine.multimodal.images import ImageLimits, ImageProcessor
from server.cli import build_parser, engine_kwargs
from tests.engine.image_server import HUGE_BYTES, SLOW_SECONDS, closed_port, image_server
from tests.engine.vlm_fixtures import (
    IMAGE_SIZE,
    build_tiny_llava,
    data_url,
    image_part,
    random_image,
    text_part,
)

pytestmark = pytest.mark.timeout(120)

DATA_URL = data_url(random_image(5))
PNG = base64.b64decode(DATA_URL.partition(",")[2])
FLAG_VARIABLES = [
    "EDGECHAT_LIMIT_IMAGES_PER_PROMPT",
    "EDGECHAT_MAX_IMAGE_BYTES",
    "EDGECHAT_MAX_IMAGE_PIXELS",
    "EDGECHAT_IMAGE_FETCH_TIMEOUT",
    "EDGECHAT_ALLOWED_LOCAL_MEDIA_PATH",
]


def processor(model_dir: Path, **limits) -> ImageProcessor:
    vision = SimpleNamespace(image_size=IMAGE_SIZE)
    return ImageProcessor(model_dir, SimpleNamespace(vision_config=vision), ImageLimits(**limits))


def assert_same_image(url: str, model_dir: Path, **limits) -> None:
    ours = processor(model_dir, **limits)
    fetched, inline = ours.load(url), ours.load(DATA_URL)
    torch.testing.assert_close(fetched.pixel_values, inline.pixel_values, atol=0, rtol=0)
    assert fetched.content_hash == inline.content_hash


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with image_server(PNG) as url:
        yield url


# -- http(s) ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/image.png", "/redirect"])
def test_fetched_image_equals_the_same_bytes_inline(tmp_path, base_url, path):
    assert_same_image(base_url + path, tmp_path)


@pytest.mark.parametrize(
    "path, message",
    [
        ("/missing", "HTTP 404"),
        ("/not-an-image", "cannot decode"),
        ("/loop", "redirects more than 3 times"),
    ],
)
def test_fetch_errors_name_the_cause(tmp_path, base_url, path, message):
    with pytest.raises(InvalidRequestError, match=message):
        processor(tmp_path).load(base_url + path)


def test_unreachable_host_is_refused(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/image.png"
    with pytest.raises(InvalidRequestError, match="cannot reach.*refused"):
        processor(tmp_path).load(url)


def test_the_timeout_bounds_the_whole_fetch(tmp_path, base_url):
    # /slow sends a byte every 0.1 s: no single read waits 0.5 s, the whole takes 30 s.
    start = time.monotonic()
    with pytest.raises(InvalidRequestError, match="timed out after 0.5 s"):
        processor(tmp_path, fetch_timeout=0.5).load(base_url + "/slow")
    assert time.monotonic() - start < SLOW_SECONDS / 2


def test_reading_stops_at_the_byte_limit(tmp_path, base_url):
    # /huge sends no Content-Length: the count of bytes read must stop it.
    with pytest.raises(InvalidRequestError, match="larger than the limit of 10000 bytes"):
        processor(tmp_path, max_bytes=10_000).load(base_url + "/huge")
    assert HUGE_BYTES > 10_000
    # With a Content-Length, the fetch is refused before reading the body.
    with pytest.raises(InvalidRequestError, match="larger than the limit"):
        processor(tmp_path, max_bytes=len(PNG) - 1).load(base_url + "/image.png")
    assert_same_image(base_url + "/image.png", tmp_path, max_bytes=len(PNG))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/image.png", "gopher://x", "image.png"])
def test_other_schemes_are_refused(tmp_path, url):
    with pytest.raises(InvalidRequestError, match="unsupported image URL"):
        processor(tmp_path).load(url)


# -- file: ------------------------------------------------------------------------------


@pytest.fixture
def media(tmp_path) -> Path:
    """``tmp_path/media`` holding ``image.png``, with ``tmp_path/outside.png`` beside it
    and a symlink ``media/escape.png`` to that."""
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "image.png").write_bytes(PNG)
    (tmp_path / "outside.png").write_bytes(PNG)
    (tmp_path / "media" / "escape.png").symlink_to(tmp_path / "outside.png")
    return tmp_path / "media"


def test_file_urls_are_refused_without_an_allowed_directory(media):
    with pytest.raises(InvalidRequestError, match="no local media directory"):
        processor(media).load((media / "image.png").as_uri())


def test_file_urls_inside_the_allowed_directory_are_read(media):
    assert_same_image((media / "image.png").as_uri(), media, local_media_dir=media)
    assert_same_image(f"file://localhost{media}/image.png", media, local_media_dir=media)
    with pytest.raises(InvalidRequestError, match="larger than the limit"):
        processor(media, local_media_dir=media, max_bytes=len(PNG) - 1).load(
            (media / "image.png").as_uri()
        )
    with pytest.raises(InvalidRequestError, match="cannot read"):
        processor(media, local_media_dir=media).load((media / "absent.png").as_uri())


@pytest.mark.parametrize(
    "name",
    ["../outside.png", "escape.png", "..", "/etc/passwd"],
    ids=["dotdot", "symlink", "parent", "absolute"],
)
def test_file_urls_outside_the_allowed_directory_are_refused(media, name):
    url = f"file://{media}/{name}" if not name.startswith("/") else f"file://{name}"
    with pytest.raises(InvalidRequestError, match="outside the allowed media directory"):
        processor(media, local_media_dir=media).load(url)


def test_file_urls_on_other_hosts_are_refused(media):
    with pytest.raises(InvalidRequestError, match="local path"):
        processor(media, local_media_dir=media).load(f"file://example.com{media}/image.png")


# -- config and flags -------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("limit_images_per_prompt", 0, "at least 1"),
        ("max_image_bytes", 0, "at least 1"),
        ("max_image_pixels", -1, "at least 1"),
        ("image_fetch_timeout", 0.0, "> 0 s"),
        ("allowed_local_media_path", "/no/such/dir", "not a directory"),
    ],
)
def test_config_validates_the_image_limits(field, value, message):
    with pytest.raises(EngineError, match=f"{field}.*{re.escape(message)}"):
        EngineConfig(**{field: value})


def test_config_passes_its_image_limits(tmp_path):
    config = EngineConfig(
        limit_images_per_prompt=2,
        max_image_bytes=1000,
        max_image_pixels=5000,
        image_fetch_timeout=1.5,
        allowed_local_media_path=str(tmp_path),
    )
    assert config.image_limits == ImageLimits(2, 1000, 5000, 1.5, tmp_path)


def test_flag_defaults_are_the_engines(monkeypatch):
    # NOTE: server/cli.py repeats ImageLimits' defaults; this keeps them the same.
    for name in FLAG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["serve"])
    assert EngineConfig(**engine_kwargs(args)).image_limits == ImageLimits()


def test_flags_and_environment_reach_the_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECHAT_IMAGE_FETCH_TIMEOUT", "2.5")
    monkeypatch.setenv("EDGECHAT_ALLOWED_LOCAL_MEDIA_PATH", str(tmp_path))
    argv = ["generate", "--prompt", "x", "--kv-cache-memory", "0.01"]
    args = build_parser().parse_args([*argv, "--limit-images-per-prompt", "1"])
    model_dir = build_tiny_llava(tmp_path / "llava")
    llm = LLM(str(model_dir), **engine_kwargs(args))
    limits = llm.engine.vision.limits
    assert (limits.max_images, limits.fetch_timeout) == (1, 2.5)
    assert limits.local_media_dir == tmp_path
    one = [{"role": "user", "content": [image_part(DATA_URL), text_part("What is it?")]}]
    assert llm.chat(one, SamplingParams(max_tokens=2)).token_ids
    two = [{"role": "user", "content": [image_part(DATA_URL), image_part(DATA_URL)]}]
    with pytest.raises(InvalidRequestError, match="at most 1 images"):
        llm.chat(two)
