"""Qwen2.5-VL and Qwen3-VL over HTTP: one and two images of different sizes with the
official client, streamed equal to unstreamed equal to the in-process engine; usage
counts each image's own tokens (expanded); /v1/models says it takes images; a bad image
is still a 400; --min-pixels/--max-pixels bound the images' resize."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from engine import LLM, EngineConfig, SamplingParams
from engine.errors import EngineError, UnsupportedModelError
from server.cli import build_parser, media_kwargs
from tests.engine.qwen2_5_vl_fixtures import build_tiny_qwen2_5_vl
from tests.engine.qwen3_vl_fixtures import build_tiny_qwen3_vl
from tests.engine.vlm_fixtures import data_url, image_part, random_image, text_part
from tests.server.conftest import LiveServer, live_server

pytestmark = pytest.mark.timeout(120)

MAX_TOKENS = 8
TALL, WIDE = data_url(random_image(1, (97, 233))), data_url(random_image(2, (200, 150)))
CONVERSATIONS = {
    "one-image": [{"role": "user", "content": [text_part("What is this?"), image_part(TALL)]}],
    "two-images": [
        {"role": "system", "content": "You look at pictures."},
        {
            "role": "user",
            # The second image_url a plain string: OpenAI's shorter form.
            "content": [
                image_part(WIDE),
                text_part("What differs from"),
                {"type": "image_url", "image_url": TALL},
            ],
        },
    ],
}


# Each family's checkpoint and its images' tokens: TALL is resized to 3 x 8 tokens of
# 28 px and WIDE to 7 x 5 for Qwen2.5-VL; to 3 x 7 and 6 x 5 of 32 px for Qwen3-VL.
FAMILIES = {
    "qwen2_5_vl": (build_tiny_qwen2_5_vl, {"one-image": 24, "two-images": 24 + 35}),
    "qwen3_vl": (build_tiny_qwen3_vl, {"one-image": 21, "two-images": 21 + 30}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def qwen_dir(family, tmp_path_factory):
    return FAMILIES[family][0](tmp_path_factory.mktemp(family))


@pytest.fixture(scope="module")
def qwen_server(qwen_dir) -> Iterator[LiveServer]:
    with live_server(qwen_dir) as live:
        yield live


@pytest.fixture(scope="module")
def local(family, qwen_dir) -> dict[str, tuple[str, int]]:
    """The in-process engine's text and prompt length for each conversation."""
    llm = LLM(str(qwen_dir), kv_cache_memory=0.05)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    pad = llm.engine.vision.image_token_id
    local = {}
    for name, messages in CONVERSATIONS.items():
        output = llm.chat(messages, params)
        assert output.prompt_token_ids.count(pad) == FAMILIES[family][1][name]
        local[name] = (output.text, len(output.prompt_token_ids))
    return local


def create(server: LiveServer, messages: list[dict], stream: bool = False):
    return server.openai().chat.completions.create(
        model=server.model,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=stream,
        extra_body={"ignore_eos": True},
    )


def test_models_lists_accepts_images(qwen_server: LiveServer) -> None:
    [card] = qwen_server.openai().models.list().data
    assert card.accepts_images is True


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_streamed_equals_unstreamed_equals_in_process(qwen_server: LiveServer, local, name):
    text, num_prompt_tokens = local[name]
    response = create(qwen_server, CONVERSATIONS[name])
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in create(qwen_server, CONVERSATIONS[name], stream=True)
    )
    assert streamed == response.choices[0].message.content == text
    assert response.usage.prompt_tokens == num_prompt_tokens
    assert qwen_server.all_blocks_free()


def test_a_bad_image_is_a_400(qwen_server: LiveServer) -> None:
    bad = [{"role": "user", "content": [image_part("data:image/png;base64,!!"), text_part("?")]}]
    with pytest.raises(openai.BadRequestError) as caught:
        create(qwen_server, bad)
    error = caught.value.body
    assert error["param"] == "messages" and "corrupt base64" in error["message"]
    assert create(qwen_server, CONVERSATIONS["one-image"]).choices[0].message.content


def test_pixel_flags_bound_the_resize(family: str, qwen_dir: Path, local) -> None:
    """--max-pixels (then --min-pixels) replace preprocessor_config.json's bounds: TALL
    fits in 4 tokens, then takes at least 40; the prompt's text is the same."""
    pp = json.loads((qwen_dir / "preprocessor_config.json").read_text())
    token = (pp["patch_size"] * pp["merge_size"]) ** 2  # pixels a token covers
    params = SamplingParams(max_tokens=1)
    messages = CONVERSATIONS["one-image"]
    num_text = local["one-image"][1] - FAMILIES[family][1]["one-image"]
    for flags, fits in (
        (["--max-pixels", str(4 * token)], lambda n: n <= 4),
        (["--min-pixels", str(40 * token)], lambda n: n >= 40),
    ):
        args = build_parser().parse_args(["serve", *flags])
        llm = LLM(str(qwen_dir), kv_cache_memory=0.05, **media_kwargs(args))
        prompt = llm.chat(messages, params).prompt_token_ids
        num_image = prompt.count(llm.engine.vision.image_token_id)
        assert fits(num_image) and len(prompt) - num_image == num_text


def test_pixel_bounds_are_checked(tiny_llava: Path) -> None:
    with pytest.raises(EngineError, match="resize_min_pixels 9 exceeds resize_max_pixels 8"):
        EngineConfig(resize_min_pixels=9, resize_max_pixels=8)
    with pytest.raises(EngineError, match="resize_max_pixels must be at least 1"):
        EngineConfig(resize_max_pixels=0)
    with pytest.raises(UnsupportedModelError, match="Qwen-VL models only"):
        LLM(str(tiny_llava), kv_cache_memory=0.05, resize_max_pixels=1000)
