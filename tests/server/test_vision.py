"""Images over HTTP: OpenAI image_url parts (data: URLs, and http URLs to a local image
server) to a tiny random LLaVA, with the official client, checked against the in-process
engine; the image and prefix caches; and the 400s for images the server cannot take."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import openai
import pytest

from engine import LLM, SamplingParams
from tests.engine.image_server import closed_port, image_server
from tests.engine.vlm_fixtures import IMAGE_SIZE, data_url, image_part, random_image, text_part
from tests.server.conftest import LiveServer, live_server

pytestmark = pytest.mark.timeout(120)

MAX_TOKENS = 8
URL_A, URL_B, URL_C = (data_url(random_image(seed)) for seed in (1, 2, 3))


def two_images(a: str = URL_A, b: str = URL_B) -> list[dict]:
    # The second image's image_url is a plain string: OpenAI's shorter form.
    second = {"type": "image_url", "image_url": b}
    return [
        {"role": "system", "content": "You look at pictures."},
        {"role": "user", "content": [image_part(a), text_part("What differs from"), second]},
    ]


def greedy(server: LiveServer, messages: list[dict], stream: bool = False) -> str:
    response = server.openai().chat.completions.create(
        model=server.model,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=stream,
        extra_body={"ignore_eos": True},
    )
    if stream:
        return "".join(chunk.choices[0].delta.content or "" for chunk in response)
    return response.choices[0].message.content


def counter(server: LiveServer, name: str) -> float:
    with server.http() as http:
        text = http.get("/metrics").text
    [value] = re.findall(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(value)


@pytest.fixture(scope="module")
def vlm_server(tiny_llava) -> Iterator[LiveServer]:
    """The tiny LLaVA, opted in to image URLs on private addresses: the image server
    these tests fetch from is on 127.0.0.1."""
    with live_server(tiny_llava, allow_private_media_urls=True) as live:
        yield live


@pytest.fixture(scope="module")
def local_text(tiny_llava) -> str:
    """What the in-process engine answers to ``two_images()``."""
    llm = LLM(str(tiny_llava), kv_cache_memory=0.05)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    return llm.chat(two_images(), params).text


def test_models_lists_accepts_images(vlm_server: LiveServer) -> None:
    [card] = vlm_server.openai().models.list().data
    assert card.accepts_images is True


def test_streamed_equals_unstreamed_equals_in_process(
    vlm_server: LiveServer, local_text: str
) -> None:
    streamed = greedy(vlm_server, two_images(), stream=True)
    assert streamed == greedy(vlm_server, two_images()) == local_text
    assert streamed


HITS, MISSES = "edgechat:image_cache_hits_total", "edgechat:image_cache_misses_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"


def test_second_turn_hits_the_prefix_cache(vlm_server: LiveServer) -> None:
    first = greedy(vlm_server, two_images())
    before = {name: counter(vlm_server, name) for name in (MISSES, PREFIX_HITS)}
    second_turn = [
        *two_images(),
        {"role": "assistant", "content": first},
        {"role": "user", "content": [text_part("And the colours?")]},
    ]
    assert greedy(vlm_server, second_turn)
    assert counter(vlm_server, PREFIX_HITS) > before[PREFIX_HITS]
    # NOTE: the cached prefix holds both images' positions, so neither is encoded again.
    assert counter(vlm_server, MISSES) == before[MISSES]


def test_a_turn_that_brings_an_image_back_and_a_new_one_hits_both_caches(
    vlm_server: LiveServer,
) -> None:
    first = greedy(vlm_server, two_images())
    before = {name: counter(vlm_server, name) for name in (HITS, MISSES, PREFIX_HITS)}
    second_turn = [
        *two_images(),
        {"role": "assistant", "content": first},
        {
            "role": "user",
            "content": [image_part(URL_C), text_part("or the first"), image_part(URL_A)],
        },
    ]
    assert greedy(vlm_server, second_turn)
    # The first turn's blocks, both images included, are shared although this prompt
    # holds other images too; image A is shown again and comes from the image cache.
    num_image_tokens = (IMAGE_SIZE // 14) ** 2
    assert counter(vlm_server, PREFIX_HITS) >= before[PREFIX_HITS] + 2 * num_image_tokens
    assert counter(vlm_server, HITS) == before[HITS] + 1
    assert counter(vlm_server, MISSES) == before[MISSES] + 1  # image C


def test_swapped_images_hit_the_image_cache_and_change_the_answer(
    vlm_server: LiveServer,
) -> None:
    straight = greedy(vlm_server, two_images())
    before = {name: counter(vlm_server, name) for name in (HITS, MISSES)}
    # Other images first: no prefix is shared, but both images' features are cached.
    assert greedy(vlm_server, two_images(URL_B, URL_A)) != straight
    assert counter(vlm_server, HITS) == before[HITS] + 2
    assert counter(vlm_server, MISSES) == before[MISSES]


def test_an_http_image_url_answers_as_the_same_image_inline(vlm_server: LiveServer) -> None:
    png = base64.b64decode(URL_A.partition(",")[2])
    with image_server(png) as base_url:
        fetched = greedy(vlm_server, two_images(f"{base_url}/image.png"))
    assert fetched == greedy(vlm_server, two_images())


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("data:image/png;base64,!!not*base64!!", "an image data: URL holds corrupt base64"),
        (f"data:image/png;base64,{base64.b64encode(b'not an image').decode()}", "cannot decode"),
        (f"http://127.0.0.1:{closed_port()}/cat.png", "cannot fetch"),
    ],
    ids=["corrupt-base64", "not-an-image", "unreachable-url"],
)
def test_bad_images_are_400s(vlm_server: LiveServer, url: str, match: str) -> None:
    # The message names which image is at fault: the second message's third part.
    check_refused(vlm_server, two_images(URL_A, url), f"messages[1].content[2]: {match}")


def test_too_many_images_is_a_400(vlm_server: LiveServer) -> None:
    parts = [image_part(URL_A)] * 9 + [text_part("Count them.")]
    check_refused(vlm_server, [{"role": "user", "content": parts}], "at most 8 images")


def check_refused(server: LiveServer, messages: list[dict], match: str) -> None:
    """A 400 OpenAI error naming the cause, after which the server still answers."""
    with pytest.raises(openai.BadRequestError) as caught:
        greedy(server, messages)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == "messages" and match in error["message"]
    assert greedy(server, two_images())
    assert server.all_blocks_free()


def test_text_only_model_refuses_images(server: LiveServer) -> None:
    [card] = server.openai().models.list().data
    assert card.accepts_images is False
    with pytest.raises(openai.BadRequestError) as caught:
        greedy(server, two_images())
    assert caught.value.body["code"] == "images_not_supported"
    assert "does not accept images" in caught.value.body["message"]
