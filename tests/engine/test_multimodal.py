"""Images in requests: decoding, preprocessing (against transformers' image processors),
limits and bad input, chat messages -> token ids with image spans, the embedding cache."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from engine import LLM, InvalidRequestError, ModelLoadError, SamplingParams
from engine.multimodal.embed_cache import ImageEmbeddingCache
from engine.multimodal.images import (
    ImageLimits,
    ImageProcessor,
    decode_data_url,
    decode_image,
    image_input,
)
from engine.multimodal.prompt import flatten_messages, render_chat
from engine.tokenizer import ChatTemplate
from tests.engine.vlm_fixtures import (
    IMAGE_SIZE,
    IMAGE_TOKEN,
    build_tiny_llava,
    data_url,
    image_part,
    random_image,
    text_part,
)

SIZES = [(80, 64), (50, 90), (56, 56), (300, 41)]
LIMITS = ImageLimits()


def processor(tmp_path, config_extra: dict | None = None, **preprocessor) -> ImageProcessor:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    vision = SimpleNamespace(image_size=IMAGE_SIZE)
    return ImageProcessor(tmp_path, SimpleNamespace(vision_config=vision, **(config_extra or {})))


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def llava_llm(tmp_path_factory) -> LLM:
    return LLM(str(build_tiny_llava(tmp_path_factory.mktemp("llava-mm"))), kv_cache_memory=0.01)


# -- preprocessing ----------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_clip_preprocessing_matches_transformers(tmp_path, size):
    ours = processor(tmp_path)  # no preprocessor keys: CLIP's defaults at the tower's size
    theirs = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    image = random_image(3, size)
    expected = theirs(images=image, return_tensors="pt").pixel_values[0]
    torch.testing.assert_close(ours.preprocess(image), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_pad_to_square_matches_transformers_llava(tmp_path, size):
    ours = processor(tmp_path, config_extra=dict(image_aspect_ratio="pad"))
    theirs = LlavaImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_pad=True,
    )
    image = random_image(4, size)
    expected = theirs(images=image, return_tensors="pt").pixel_values[0]
    torch.testing.assert_close(ours.preprocess(image), expected, atol=1e-6, rtol=0)


def test_preprocessor_config_mean_std_and_do_pad_are_read(tmp_path):
    ours = processor(tmp_path, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pad=True)
    assert ours.pad_to_square
    pixels = ours.preprocess(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 0, 255)))
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert pixels[0].eq(1).all() and pixels[1].eq(-1).all()


def test_preprocessor_configs_the_tower_cannot_take_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="without a center crop"):
        processor(tmp_path, do_center_crop=False)
    with pytest.raises(ModelLoadError, match="makes 32x32 images"):
        processor(tmp_path, crop_size={"height": 32, "width": 32})
    resized = processor(
        tmp_path, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False
    )
    assert resized.preprocess(random_image(0, (90, 30))).shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_exif_orientation_is_applied():
    image = random_image(5, (80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encoded(image, "JPEG", exif=exif), LIMITS)
    assert decoded.size == (40, 80)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "I;16"])
def test_other_modes_become_rgb(mode):
    base = Image.new("RGBA", (20, 10), (10, 200, 30, 255))
    image = base.convert(mode) if mode != "I;16" else Image.new("I;16", (20, 10), 4000)
    decoded = decode_image(encoded(image, "PNG"), LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (20, 10)


def test_transparency_is_composited_over_white():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(encoded(image, "PNG"), LIMITS).getpixel((3, 3)) == (255, 255, 255)


def test_gif_first_frame_and_webp():
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert decode_image(gif.getvalue(), LIMITS).getpixel((5, 5)) == (255, 0, 0)
    image = random_image(6)
    webp = decode_image(encoded(image, "WEBP", lossless=True), LIMITS)
    assert webp.mode == image.mode and webp.tobytes() == image.tobytes()


def test_content_hash_is_of_the_pixels(tmp_path):
    ours = processor(tmp_path)
    image = random_image(7)
    png = ours.load(data_url(image, "PNG"))
    webp = ours.load(data_url(image, "WEBP", lossless=True))
    other = ours.load(data_url(random_image(8), "PNG"))
    assert png.content_hash == webp.content_hash != other.content_hash


# -- bad input --------------------------------------------------------------------------


def b64_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.com/cat.png", "data: URL or an http"),
        ("file:///etc/passwd", "no local media directory"),
        ("data:image/png,rawbytes", "base64"),
        ("data:image/png;base64,@@@not base64@@@", "corrupt base64"),
        (b64_url(b"not an image at all"), "cannot decode"),
        (b64_url(encoded(random_image(0), "PNG")[:200]), "cannot decode"),
        (b64_url(b"GIF89a", "text/plain"), "media type"),
        (b64_url(encoded(random_image(0), "BMP")), "format BMP"),
    ],
)
def test_bad_images_are_refused_with_the_cause(tmp_path, url, message):
    with pytest.raises(InvalidRequestError, match=message):
        processor(tmp_path).load(url)


def test_size_limits(tmp_path):
    png = encoded(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(InvalidRequestError, match="pixels"):
        decode_image(png, ImageLimits(max_pixels=300 * 299))
    decode_image(png, ImageLimits(max_pixels=300 * 300))
    with pytest.raises(InvalidRequestError, match="bytes"):
        decode_data_url(b64_url(png), "image", len(png) // 2)
    with pytest.raises(InvalidRequestError, match="bytes"):
        decode_image(png, ImageLimits(max_bytes=len(png) - 1))


def test_decompression_bomb_is_refused_before_decoding():
    # 20000 x 20000 of one colour: a few hundred KB of PNG, 1.2 GB decoded.
    bomb = encoded(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 1_000_000
    with pytest.raises(InvalidRequestError, match="pixels"):
        decode_image(bomb, LIMITS)


def test_message_errors(llava_llm):
    engine = llava_llm.engine
    url = data_url(random_image(0))
    too_many = [{"role": "user", "content": [image_part(url)] * 9}]
    with pytest.raises(InvalidRequestError, match="at most 8 images"):
        engine.chat_request(too_many)
    with pytest.raises(InvalidRequestError, match="content part type 'audio'"):
        engine.chat_request([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(InvalidRequestError, match="placeholder"):
        engine.chat_request([{"role": "user", "content": [text_part(f"a {IMAGE_TOKEN} b")]}])
    with pytest.raises(InvalidRequestError, match="image_url.url"):
        engine.chat_request([{"role": "user", "content": [{"type": "image_url"}]}])
    with pytest.raises(InvalidRequestError, match="chat_request"):
        engine.chat_prompt([{"role": "user", "content": [image_part(url)]}])


def test_token_prompts_must_match_their_images(llava_llm):
    engine = llava_llm.engine
    token_ids, images = engine.chat_request(
        [{"role": "user", "content": [image_part(data_url(random_image(0))), text_part("hi")]}]
    )
    params = SamplingParams()
    engine.make_sequence("ok", token_ids, params, images)
    with pytest.raises(InvalidRequestError, match="image tokens"):
        engine.make_sequence("no-images", token_ids, params)
    with pytest.raises(InvalidRequestError, match="image tokens"):
        engine.make_sequence("two", token_ids, params, images * 2)
    with pytest.raises(InvalidRequestError, match="ImageInputs"):
        engine.make_sequence("raw", token_ids, params, [images[0].pixel_values])
    # A string prompt names each image once; the engine expands it.
    seq = engine.make_sequence("text", f"look: {IMAGE_TOKEN} ok", params, images)
    assert (
        seq.prompt_token_ids.count(engine.vision.image_token_id) == engine.vision.num_image_tokens
    )


def test_text_only_model_refuses_images(tiny_llama):
    llm = LLM(str(tiny_llama), kv_cache_memory=0.01)
    url = data_url(random_image(0))
    with pytest.raises(InvalidRequestError, match="does not accept images"):
        llm.chat([{"role": "user", "content": [text_part("hi"), image_part(url)]}])
    with pytest.raises(InvalidRequestError, match="does not accept images"):
        llm.engine.make_sequence("x", [1, 2, 3], SamplingParams(), [image_input(torch.zeros(3))])
    # Text parts alone are fine for any model.
    messages = [{"role": "user", "content": [text_part("a"), text_part("b")]}]
    assert llm.engine.chat_request(messages) == (
        llm.engine.chat_prompt([{"role": "user", "content": "a\nb"}]),
        [],
    )


# -- prompts ----------------------------------------------------------------------------


def test_images_keep_their_places_across_messages():
    loaded: list[str] = []

    def load(url: str):
        loaded.append(url)
        return url

    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [image_part("A"), text_part("one"), image_part("B")]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [text_part("two"), image_part("C"), text_part("three")]},
    ]
    flat, images = flatten_messages(messages, load, "<image>", 8)
    assert images == loaded == ["A", "B", "C"]
    assert [m["content"] for m in flat] == [
        "sys",
        "<image>\none\n<image>",
        "ok",
        "two\n<image>\nthree",
    ]
    assert flat[1]["role"] == "user"


def test_chat_request_expands_each_image(llava_llm):
    engine = llava_llm.engine
    url_a, url_b = data_url(random_image(1)), data_url(random_image(2))
    messages = [{"role": "user", "content": [image_part(url_a), text_part("x"), image_part(url_b)]}]
    token_ids, images = engine.chat_request(messages)
    assert len(images) == 2 and images[0].content_hash != images[1].content_hash
    positions = [p for p, t in enumerate(token_ids) if t == engine.vision.image_token_id]
    assert len(positions) == 2 * engine.vision.num_image_tokens == 32
    # Two runs of 16, separated by the text between them.
    assert positions[15] + 1 < positions[16]
    assert positions[:16] == list(range(positions[0], positions[0] + 16))


# -- embedding cache --------------------------------------------------------------------


def test_embedding_cache_is_lru_and_counts():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    cache = ImageEmbeddingCache(max_bytes=2 * a.numel() * a.element_size())  # two entries
    assert cache.get(b"a") is None
    cache.put(b"a", a)
    cache.put(b"b", b)
    assert cache.get(b"a") is a  # now b is the least recently used
    cache.put(b"c", c)
    assert cache.get(b"b") is None and cache.get(b"c") is c and cache.get(b"a") is a
    assert (cache.num_hits, cache.num_misses) == (3, 2)
    assert cache.num_bytes == 2 * a.element_size()


def test_embedding_cache_keeps_nothing_larger_than_its_budget():
    cache = ImageEmbeddingCache(max_bytes=8)
    cache.put(b"big", torch.zeros(3))  # 12 bytes
    assert cache.get(b"big") is None and cache.num_bytes == 0


def test_second_turn_about_an_image_does_not_reencode_it(tmp_path_factory):
    model_dir = build_tiny_llava(tmp_path_factory.mktemp("llava-cache"))
    llm = LLM(str(model_dir), kv_cache_memory=0.01, enable_prefix_caching=False)
    url = data_url(random_image(9))
    greedy = SamplingParams(max_tokens=4, temperature=0)
    first = llm.chat([{"role": "user", "content": [image_part(url), text_part("what?")]}], greedy)
    llm.chat(
        [
            {"role": "user", "content": [image_part(url), text_part("what?")]},
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": "and then?"},
        ],
        greedy,
    )
    stats = llm.engine.stats()
    assert (stats.num_image_cache_hits, stats.num_image_cache_misses) == (1, 1)


def test_image_features_are_freed_once_their_tokens_are_cached(llava_llm):
    engine = llava_llm.engine
    content = [image_part(data_url(random_image(3))), text_part("what is it?")]
    messages = [{"role": "user", "content": content}]
    token_ids, images = engine.chat_request(messages)
    engine.add_request("freed", token_ids, SamplingParams(max_tokens=3, temperature=0), images)
    seq = engine.core.requests["freed"]
    outputs = engine.step()  # the whole prompt, image included, and the first token
    assert [o.request_id for o in outputs] == ["freed"] and seq.num_computed_tokens == len(
        token_ids
    )
    assert seq.image_embeds == {}
    while engine.has_unfinished:
        engine.step()


# Like llava-hf's: iterates over content parts, so string content renders as nothing.
PARTS_ONLY_TEMPLATE = (
    "{%- for m in messages -%}{{ m['role'].upper() }}: "
    "{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'text' %} {{ part['text'] }}{% endif -%}"
    "{%- endfor %}\n{% endfor -%}ASSISTANT:"
)


def test_templates_that_only_take_parts_still_get_every_image(llava_llm, tmp_path):
    template_file = tmp_path / "parts.jinja"
    template_file.write_text(PARTS_ONLY_TEMPLATE)
    engine = llava_llm.engine
    template = ChatTemplate(engine.tokenizer, str(template_file))
    messages = [
        {"role": "user", "content": [text_part("first"), image_part("A"), text_part("then")]},
        {"role": "user", "content": [image_part("B")]},
    ]
    flat, _ = flatten_messages(messages, lambda url: url, IMAGE_TOKEN, 8)
    text = render_chat(template, messages, flat)
    # (transformers renders with trim_blocks: the newline after each message is dropped.)
    assert text == f"USER: first\n{IMAGE_TOKEN}\nthenUSER: {IMAGE_TOKEN}ASSISTANT:"
    # The demo (ChatML) template takes the strings as they are.
    chatml = render_chat(engine.inputs.chat_template, messages, flat)
    assert f"<|im_start|>user\nfirst\n{IMAGE_TOKEN}\nthen<|im_end|>" in chatml


def test_a_template_that_drops_parts_is_refused(llava_llm, tmp_path):
    template_file = tmp_path / "drops.jinja"
    template_file.write_text("{% for m in messages %}{{ m['role'] }}{% endfor %}")
    template = ChatTemplate(llava_llm.engine.tokenizer, str(template_file))
    messages = [{"role": "user", "content": [text_part("hello")]}]
    flat, _ = flatten_messages(messages, None, None, 0)
    with pytest.raises(InvalidRequestError, match="drops the text"):
        render_chat(template, messages, flat)


# -- sizes after the model's resize or padding ------------------------------------------


def test_a_strip_is_refused_before_the_resize_would_grow_it(tmp_path):
    # 1 x 10000 passes the pixel limit, but resized to a shortest edge of 56 it would be
    # 56 x 560000 (336 x 13,440,000 for 1 x 40000 on a real CLIP): refused undecoded.
    strip = b64_url(encoded(Image.new("RGB", (1, 10_000)), "PNG"))
    with pytest.raises(InvalidRequestError, match="more than 20 times apart"):
        processor(tmp_path).load(strip)


def test_padding_to_a_square_counts_against_the_pixel_limit(tmp_path):
    # 1000 x 100 is 100k pixels; padded to a square it is 1M, over a limit of 500k.
    wide = encoded(Image.new("RGB", (1000, 100)), "PNG")
    pad = processor(tmp_path, {"image_aspect_ratio": "pad"})
    limited = ImageProcessor(tmp_path, pad_config(), ImageLimits(max_pixels=500_000))
    with pytest.raises(InvalidRequestError, match="1000x1000 padded to a square.*500000"):
        limited.load(b64_url(wide))
    assert pad.load(b64_url(wide)).pixel_values.shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_the_resized_size_counts_against_the_pixel_limit(tmp_path):
    # 20 x 400 (8000 pixels) resized to a shortest edge of 56 is 56 x 1120: over 10k.
    tall = b64_url(encoded(Image.new("RGB", (20, 400)), "PNG"))
    limited = ImageProcessor(tmp_path, plain_config(), ImageLimits(max_pixels=10_000))
    with pytest.raises(InvalidRequestError, match="56x1120 resized for the model"):
        limited.load(tall)


def plain_config() -> SimpleNamespace:
    return SimpleNamespace(vision_config=SimpleNamespace(image_size=IMAGE_SIZE))


def pad_config() -> SimpleNamespace:
    return SimpleNamespace(
        vision_config=SimpleNamespace(image_size=IMAGE_SIZE), image_aspect_ratio="pad"
    )
