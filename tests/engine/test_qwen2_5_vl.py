"""Qwen2.5-VL and Qwen3-VL against transformers' Qwen2_5_VLForConditionalGeneration and
Qwen3VLForConditionalGeneration on the same random weights and pixel values, in fp32 on
CPU: logits of prefill and decode, greedy tokens, and the engine's ways of computing a
prompt (chunks, batches, preemption, the prefix cache), each of which must keep the
M-RoPE positions of images of different sizes (and Qwen3-VL's DeepStack features)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from engine import LLM, InvalidRequestError, SamplingParams
from engine.llm_engine import LLMEngine
from engine.scheduler import ScheduledBatch
from tests.engine.qwen2_5_vl_fixtures import build_tiny_qwen2_5_vl, load_qwen2_5_vl_reference
from tests.engine.qwen3_vl_fixtures import build_tiny_qwen3_vl, load_qwen3_vl_reference
from tests.engine.vlm_fixtures import data_url, image_part, random_image, text_part

NUM_DECODE = 8
GREEDY = SamplingParams(max_tokens=NUM_DECODE, temperature=0, ignore_eos=True)
# Both need resizing (to multiples of 28 px for Qwen2.5-VL, of 32 px for Qwen3-VL).
TALL = data_url(random_image(1, (97, 233)))
WIDE = data_url(random_image(2, (200, 150)))
SMALL = data_url(random_image(3, (60, 50)))


@dataclass(frozen=True)
class Family:
    """A Qwen-VL model family's tiny checkpoint and the token counts its images take."""

    name: str
    build: Callable[[Path], Path]
    load_reference: Callable[[Path], torch.nn.Module]
    tall_tokens: int
    wide_tokens: int
    # An image whose grid differs from TALL's but whose token count is the same.
    same_count: str


FAMILIES = {
    # TALL -> 84x224 (3 x 8 tokens), WIDE -> 196x140 (7 x 5); 168x112 is 6 x 4.
    "qwen2_5_vl": Family(
        "qwen2_5_vl",
        build_tiny_qwen2_5_vl,
        load_qwen2_5_vl_reference,
        24,
        35,
        data_url(random_image(4, (168, 112))),
    ),
    # TALL -> 96x224 (3 x 7 tokens), WIDE -> 192x160 (6 x 5); 224x96 is 7 x 3.
    "qwen3_vl": Family(
        "qwen3_vl",
        build_tiny_qwen3_vl,
        load_qwen3_vl_reference,
        21,
        30,
        data_url(random_image(4, (224, 96))),
    ),
}


def one_image(url: str = TALL) -> list[dict]:
    return [{"role": "user", "content": [text_part("What is this?"), image_part(url)]}]


def two_images() -> list[dict]:
    parts = [image_part(TALL), text_part("and"), image_part(WIDE), text_part("?")]
    return [{"role": "user", "content": parts}]


def image_text_image() -> list[dict]:
    return [
        {"role": "system", "content": "You look at pictures."},
        {"role": "user", "content": [image_part(WIDE), text_part("Describe it.")]},
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": [text_part("Now this one:"), image_part(TALL)]},
    ]


def text_only() -> list[dict]:
    return [{"role": "user", "content": [text_part("Say"), text_part(" something.")]}]


CONVERSATIONS = {
    "one-image": one_image(),
    "two-images": two_images(),
    "image-text-image": image_text_image(),
    "text-only": text_only(),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def qwen_dir(family, tmp_path_factory):
    return family.build(tmp_path_factory.mktemp(family.name))


@pytest.fixture(scope="module")
def reference(family, qwen_dir):
    return family.load_reference(qwen_dir)


@pytest.fixture(scope="module")
def llm(qwen_dir) -> LLM:
    # A small token budget: prompts are prefilled in chunks that split image spans.
    return LLM(str(qwen_dir), kv_cache_memory=0.01, max_num_batched_tokens=40, max_num_seqs=4)


def reference_inputs(reference, token_ids: list[int], images) -> dict:
    input_ids = torch.tensor([token_ids])
    inputs = dict(input_ids=input_ids)
    if images:
        inputs.update(
            pixel_values=torch.cat([image.pixel_values.flatten(0, 3) for image in images]),
            image_grid_thw=torch.tensor(
                [
                    [1, 2 * image.pixel_values.shape[1], 2 * image.pixel_values.shape[2]]
                    for image in images
                ]
            ),
            mm_token_type_ids=(input_ids == reference.config.image_token_id).int(),
        )
    return inputs


def reference_greedy(reference, token_ids, images) -> list[int]:
    with torch.no_grad():
        out = reference.generate(
            **reference_inputs(reference, token_ids, images),
            max_new_tokens=NUM_DECODE,
            min_new_tokens=NUM_DECODE,
            do_sample=False,
        )
    return out[0, len(token_ids) :].tolist()


def reference_logits(reference, token_ids, images) -> torch.Tensor:  # [len, vocab]
    with torch.no_grad():
        return reference(**reference_inputs(reference, token_ids, images)).logits[0]


def our_logits(engine: LLMEngine, token_ids, images, chunk: int) -> tuple[torch.Tensor, list[int]]:
    """Our logits at the prompt's last position and after each of NUM_DECODE greedy
    tokens, the prompt computed ``chunk`` tokens per step; and those tokens."""
    seq = engine.make_sequence("parity", token_ids, SamplingParams(), images)
    # The engine's own blocks (freed after), so later requests never read KV this wrote.
    bm = engine.core.block_manager
    rows = []
    while True:
        num_new = min(chunk, seq.num_uncomputed_tokens)
        bm.allocate(seq, seq.num_computed_tokens + num_new)
        batch = ScheduledBatch()
        batch.add(seq, num_new)
        logits = engine.core.runner.run(batch).logits
        seq.num_computed_tokens += num_new
        if seq.num_uncomputed_tokens:
            continue
        rows.append(logits[0])
        if len(rows) == NUM_DECODE + 1:
            bm.free(seq)
            engine.core.runner.remove_request(seq.seq_id)
            return torch.stack(rows), seq.output_token_ids
        seq.append_token(int(logits[0].argmax()))


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_logits_and_greedy_tokens_match_transformers(llm, reference, name):
    engine = llm.engine
    token_ids, images = engine.chat_request(CONVERSATIONS[name])
    ours, tokens = our_logits(engine, token_ids, images, chunk=1000)
    theirs = reference_logits(reference, token_ids + tokens, images)[len(token_ids) - 1 :]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert tokens == reference_greedy(reference, token_ids, images)
    assert llm.chat(CONVERSATIONS[name], GREEDY).token_ids == tokens


def test_prompts_hold_each_image_as_its_size_gives(llm, family):
    engine = llm.engine
    token_ids, images = engine.chat_request(two_images())
    pad = engine.vision.image_token_id
    assert token_ids.count(pad) == family.tall_tokens + family.wide_tokens
    text = engine.tokenizer.decode(token_ids)
    # The template joins the parts itself: no newline added between them.
    assert "<|vision_end|>and<|vision_start|>" in text
    assert "<|vision_end|>?<|im_end|>" in text


@pytest.mark.parametrize("name", ["two-images", "image-text-image"])
def test_chunk_boundaries_inside_images(llm, reference, name):
    engine = llm.engine
    token_ids, images = engine.chat_request(CONVERSATIONS[name])
    first_image = token_ids.index(engine.vision.image_token_id)
    theirs = reference_logits(reference, token_ids, images)[-1]
    for chunk in (first_image + 5, 7):
        ours, _ = our_logits(engine, token_ids, images, chunk)
        torch.testing.assert_close(ours[0], theirs, atol=1e-4, rtol=1e-4)


def run_together(engine: LLMEngine, conversations, params) -> list[list[int]]:
    for i, messages in enumerate(conversations):
        token_ids, images = engine.chat_request(messages)
        engine.add_request(f"together-{i}", token_ids, params, images)
    finished = {}
    while engine.has_unfinished:
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output.token_ids
    return [finished[f"together-{i}"] for i in range(len(conversations))]


def test_batched_with_other_requests(llm):
    conversations = list(CONVERSATIONS.values()) + [one_image(SMALL)]
    alone = [llm.chat(messages, GREEDY).token_ids for messages in conversations]
    assert run_together(llm.engine, conversations, GREEDY) == alone


def block_bytes(qwen_dir: Path, block_size: int = 16) -> int:
    """One KV block's bytes, fp32: K and V, every layer."""
    text = json.loads((qwen_dir / "config.json").read_text())["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    per_token = text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim
    return 2 * per_token * block_size * 4


def test_preemption_changes_nothing(qwen_dir, llm):
    """A pool too small for every request at once: preempted sequences are recomputed
    (prompt and generated tokens) with the same positions and give the same tokens."""
    small = LLM(
        str(qwen_dir),
        kv_cache_memory=14 * block_bytes(qwen_dir) / 2**30,
        max_num_batched_tokens=48,
        max_num_seqs=4,
    )
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    conversations = list(CONVERSATIONS.values())
    want = [llm.chat(messages, params).token_ids for messages in conversations]
    engine = small.engine
    assert run_together(engine, conversations, params) == want
    assert engine.core.scheduler.num_preemptions > 0
    assert engine.core.block_manager.num_free_blocks == engine.core.block_manager.num_blocks


def test_second_turn_from_the_prefix_cache(qwen_dir, reference):
    llm = LLM(str(qwen_dir), kv_cache_memory=0.01)
    engine = llm.engine
    first = image_text_image()[:2]
    reply = llm.chat(first, GREEDY)
    second = [
        *first,
        {"role": "assistant", "content": engine.tokenizer.decode(reply.token_ids)},
        {"role": "user", "content": [text_part("Now this one:"), image_part(TALL)]},
    ]
    hits = engine.stats().num_prefix_hit_tokens
    token_ids, images = engine.chat_request(second)
    output = llm.chat(second, GREEDY)
    first_ids = engine.chat_request(first)[0]
    block_size = engine.config.block_size
    assert engine.stats().num_prefix_hit_tokens - hits >= len(first_ids) // block_size * block_size
    assert output.token_ids == reference_greedy(reference, token_ids, images)


def test_images_of_different_sizes_never_share_the_blocks_after_them(qwen_dir, family):
    """The same tokens, images of different grids but as many tokens first: the
    only blocks shared are those before the image (its own blocks key on its content,
    and the text after it takes positions that depend on its grid)."""
    llm = LLM(str(qwen_dir), kv_cache_memory=0.01)
    engine = llm.engine
    block_size = engine.config.block_size
    prompts = [image_text_image(), image_text_image()]
    for prompt, url in zip(prompts, (TALL, family.same_count)):
        prompt[1] = {"role": "user", "content": [image_part(url), text_part("Describe it.")]}
    assert engine.chat_request(prompts[0])[0] == engine.chat_request(prompts[1])[0]
    llm.chat(prompts[0], GREEDY)
    hits = engine.stats().num_prefix_hit_tokens
    token_ids, _ = engine.chat_request(prompts[1])
    output = llm.chat(prompts[1], GREEDY)
    first_image = token_ids.index(engine.vision.image_token_id)
    assert engine.stats().num_prefix_hit_tokens - hits == first_image // block_size * block_size
    fresh = LLM(str(qwen_dir), kv_cache_memory=0.01).chat(prompts[1], GREEDY)
    assert output.token_ids == fresh.token_ids


def test_bad_prompts_are_refused_before_any_work(llm, family):
    engine = llm.engine
    with pytest.raises(InvalidRequestError, match="image placeholder"):
        engine.chat_request([{"role": "user", "content": [text_part("a <|image_pad|> b")]}])
    token_ids, images = engine.chat_request(one_image())
    tall, wide = family.tall_tokens, family.wide_tokens
    with pytest.raises(InvalidRequestError, match=f"{tall} image tokens but its 0 images take 0"):
        engine.add_request("no-images", token_ids, GREEDY)
    with pytest.raises(InvalidRequestError, match=f"take {wide}"):
        engine.add_request(
            "other-image",
            token_ids,
            GREEDY,
            engine.chat_request([{"role": "user", "content": [image_part(WIDE)]}])[1],
        )
    with pytest.raises(InvalidRequestError, match="1 image tokens for 2 images"):
        engine.inputs.prepare("<|image_pad|> twice?", images * 2)
    assert not engine.has_unfinished
