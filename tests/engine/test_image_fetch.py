"""Image URLs that are not inline: http(s) fetched from a local test server (redirects,
errors, the deadline and the byte limit; the server is on 127.0.0.1, so these tests opt
in to private addresses), internal addresses refused by default (after resolving, on
every redirect hop, pinned to the address checked), file: URLs confined to the allowed
directory, and the image limits as engine config and command-line flags."""

from __future__ import annotations

import base64
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from engine import LLM, EngineConfig, EngineError, InvalidRequestError, SamplingParams
from engine.multimodal import fetch
from engine.multimodal.fetch import MediaURLPolicy
from engine.multimodal.images import ImageLimits, ImageProcessor
from server.cli import build_parser, engine_kwargs, media_kwargs
from tests.engine.image_server import (
    HUGE_BYTES,
    SLOW_SECONDS,
    closed_port,
    image_server,
    redirecting_to,
    trap,
)
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
    "EDGECHAT_ALLOWED_MEDIA_DOMAINS",
]
# The test servers listen on 127.0.0.1, which the default policy refuses.
LOCAL = MediaURLPolicy(allow_private=True)
CANNOT_FETCH = "cannot fetch image .*: refused, unreachable, too slow, or not answered"


def processor(model_dir: Path, **limits) -> ImageProcessor:
    vision = SimpleNamespace(image_size=IMAGE_SIZE)
    limits = ImageLimits(**{"url_policy": LOCAL, **limits})
    return ImageProcessor(model_dir, SimpleNamespace(vision_config=vision), limits)


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


@pytest.mark.parametrize("path", ["/missing", "/loop"])
def test_fetch_errors_do_not_tell_what_is_there(tmp_path, base_url, path, caplog):
    # A 404, a redirect loop and a closed port read alike: no port scanner. The log
    # has the cause.
    caplog.set_level("INFO", logger=fetch.__name__)
    with pytest.raises(InvalidRequestError, match=CANNOT_FETCH):
        processor(tmp_path).load(base_url + path)
    assert re.search("HTTP 404|more than 3 redirects", caplog.text)


def test_a_fetched_body_that_is_not_an_image_is_refused(tmp_path, base_url):
    with pytest.raises(InvalidRequestError, match="cannot decode"):
        processor(tmp_path).load(base_url + "/not-an-image")


def test_unreachable_host_is_refused(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/image.png"
    with pytest.raises(InvalidRequestError, match=CANNOT_FETCH):
        processor(tmp_path).load(url)


def test_the_timeout_bounds_the_whole_fetch(tmp_path, base_url, caplog):
    # /slow sends a byte every 0.1 s: no single read waits 0.5 s, the whole takes 30 s.
    caplog.set_level("INFO", logger=fetch.__name__)
    start = time.monotonic()
    with pytest.raises(InvalidRequestError, match=CANNOT_FETCH):
        processor(tmp_path, fetch_timeout=0.5).load(base_url + "/slow")
    assert time.monotonic() - start < SLOW_SECONDS / 2
    assert "timed out after 0.5 s" in caplog.text


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


# -- internal addresses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.1", "169.254.169.254", "0.0.0.0"]
)
def test_internal_addresses_are_refused_by_default(tmp_path, host):
    with trap() as (url, reached):
        url = url.replace("127.0.0.1", host)
        with pytest.raises(InvalidRequestError, match=CANNOT_FETCH):
            processor(tmp_path, url_policy=MediaURLPolicy()).load(url)
        assert not reached()


def test_a_redirect_to_an_internal_address_is_refused(tmp_path, monkeypatch):
    # The first hop passes as if it were public; the redirect's target is checked anew.
    verdicts = iter([False, True])
    monkeypatch.setattr(fetch, "is_internal", lambda address: next(verdicts))
    with trap() as (target, reached), redirecting_to(target) as url:
        with pytest.raises(InvalidRequestError, match=CANNOT_FETCH):
            processor(tmp_path, url_policy=MediaURLPolicy()).load(url)
        assert not reached()


def test_the_connection_goes_to_the_address_checked(tmp_path, base_url, monkeypatch):
    # "media.test" resolves to the test server once; resolved again (to connect), it would
    # fail, as a rebinding name would answer with another address.
    port = int(base_url.rsplit(":", 1)[1])
    real = socket.getaddrinfo
    lookups = []

    def resolve_once(host, *args, **kwargs):
        if host != "media.test":
            return real(host, *args, **kwargs)
        lookups.append(host)
        if len(lookups) > 1:
            raise socket.gaierror("media.test was resolved again")
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(fetch.socket, "getaddrinfo", resolve_once)
    assert_same_image(f"http://media.test:{port}/image.png", tmp_path)
    assert lookups == ["media.test"]


def test_a_resolver_that_never_answers_is_cut_off_at_the_deadline(tmp_path, monkeypatch):
    release = threading.Event()
    lookups = []

    def never_answers(host, *args, **kwargs):
        lookups.append(host)
        release.wait()
        raise socket.gaierror("released by the test")

    monkeypatch.setattr(fetch.socket, "getaddrinfo", never_answers)
    try:
        with pytest.raises(InvalidRequestError, match=CANNOT_FETCH):
            processor(tmp_path, fetch_timeout=0.2).load("http://dns.test/image.png")
        assert lookups == ["dns.test"]
    finally:
        release.set()


def test_allowed_domains_and_no_http(tmp_path, base_url):
    only = MediaURLPolicy(allowed_domains=("images.example.com",), allow_private=True)
    with pytest.raises(InvalidRequestError, match=CANNOT_FETCH):
        processor(tmp_path, url_policy=only).load(base_url + "/image.png")
    allowed = MediaURLPolicy(allowed_domains=("127.0.0.1",), allow_private=True)
    assert_same_image(base_url + "/image.png", tmp_path, url_policy=allowed)
    with pytest.raises(InvalidRequestError, match="data: URL"):
        processor(tmp_path, url_policy=MediaURLPolicy(allow_http=False)).load(base_url)


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
    assert EngineConfig(
        allowed_media_domains=("a.com",), allow_private_media_urls=True, allow_http_media=False
    ).image_limits.url_policy == MediaURLPolicy(False, ("a.com",), True)


def test_flag_defaults_are_the_engines(monkeypatch):
    # NOTE: server/cli.py repeats ImageLimits' defaults; this keeps them the same.
    for name in FLAG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["serve"])
    assert EngineConfig(**media_kwargs(args)).image_limits == ImageLimits()


def test_flags_and_environment_reach_the_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECHAT_IMAGE_FETCH_TIMEOUT", "2.5")
    monkeypatch.setenv("EDGECHAT_ALLOWED_LOCAL_MEDIA_PATH", str(tmp_path))
    argv = ["serve", "--kv-cache-memory", "0.01"]
    args = build_parser().parse_args([*argv, "--limit-images-per-prompt", "1"])
    flags = ["--allowed-media-domains", "a.com, b.org", "--allow-private-media-urls"]
    policy = EngineConfig(**media_kwargs(build_parser().parse_args([*argv, *flags])))
    assert policy.image_limits.url_policy == MediaURLPolicy(True, ("a.com", "b.org"), True)
    model_dir = build_tiny_llava(tmp_path / "llava")
    llm = LLM(str(model_dir), **engine_kwargs(args), **media_kwargs(args))
    limits = llm.engine.vision.limits
    assert (limits.max_images, limits.fetch_timeout) == (1, 2.5)
    assert limits.local_media_dir == tmp_path
    one = [{"role": "user", "content": [image_part(DATA_URL), text_part("What is it?")]}]
    assert llm.chat(one, SamplingParams(max_tokens=2)).token_ids
    two = [{"role": "user", "content": [image_part(DATA_URL), image_part(DATA_URL)]}]
    with pytest.raises(InvalidRequestError, match="at most 1 images"):
        llm.chat(two)
