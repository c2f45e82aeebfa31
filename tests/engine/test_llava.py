"""LLaVA-1.5 against transformers' LlavaForConditionalGeneration on the same random
weights and the same pixel values, in fp32 on CPU."""

from __future__ import annotations

import asyncio

import pytest
import torch

from engine import LLM, AsyncLLM, SamplingParams
from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.scheduler import ScheduledBatch
from tests.engine.vlm_fixtures import (
    build_tiny_llava,
    data_url,
    image_part,
    load_llava_reference,
    random_image,
    save_renamed,
    text_part,
)

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
URLS = [data_url(random_image(seed, size=(60 + 7 * seed, 50))) for seed in range(4)]


def one_image(url: str = URLS[0]) -> list[dict]:
    return [{"role": "user", "content": [text_part("What is this?"), image_part(url)]}]


def three_images(a: str = URLS[0], b: str = URLS[1], c: str = URLS[2]) -> list[dict]:
    return [
        {"role": "system", "content": "You look at pictures."},
        {"role": "user", "content": [image_part(a), text_part("and"), image_part(b)]},
        {"role": "assistant", "content": "Two pictures."},
        {"role": "user", "content": [text_part("Now this one:"), image_part(c), text_part("?")]},
    ]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def reference(llava_dir):
    return load_llava_reference(llava_dir)


@pytest.fixture(scope="module")
def llm(llava_dir) -> LLM:
    # A small token budget: prompts are prefilled in chunks that split image spans.
    return LLM(str(llava_dir), kv_cache_memory=0.01, max_num_batched_tokens=64, max_num_seqs=4)


def reference_greedy(reference, token_ids, images, num_new: int = GREEDY.max_tokens) -> list[int]:
    with torch.no_grad():
        out = reference.generate(
            input_ids=torch.tensor([token_ids]),
            pixel_values=torch.stack([image.pixel_values for image in images]),
            max_new_tokens=num_new,
            min_new_tokens=num_new,
            do_sample=False,
        )
    return out[0, len(token_ids) :].tolist()


def reference_last_logits(reference, token_ids, images) -> torch.Tensor:
    with torch.no_grad():
        return reference(
            input_ids=torch.tensor([token_ids]),
            pixel_values=torch.stack([image.pixel_values for image in images]),
        ).logits[0, -1]


def chunked_prefill_logits(engine: LLMEngine, token_ids, images, chunk: int) -> torch.Tensor:
    """Our last-position logits, the prompt computed ``chunk`` tokens per step."""
    seq = engine.make_sequence("parity", token_ids, SamplingParams(), images)
    bm = BlockManager(engine.core.block_manager.num_blocks, engine.config.block_size)
    while seq.num_computed_tokens < len(seq):
        num_new = min(chunk, seq.num_uncomputed_tokens)
        bm.allocate(seq, seq.num_computed_tokens + num_new)
        batch = ScheduledBatch()
        batch.add(seq, num_new)
        logits = engine.core.runner.run(batch).logits
        seq.num_computed_tokens += num_new
    return logits[0]


@pytest.mark.parametrize("messages", [one_image(), three_images()], ids=["1-image", "3-images"])
@pytest.mark.parametrize("chunk", [5, 1000])
def test_prefill_logits_match_transformers(llm, reference, messages, chunk):
    engine = llm.engine
    token_ids, images = engine.chat_request(messages)
    assert (
        token_ids.count(engine.vision.image_token_id)
        == len(images) * engine.vision.num_image_tokens
    )
    ours = chunked_prefill_logits(engine, token_ids, images, chunk)
    theirs = reference_last_logits(reference, token_ids, images)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("messages", [one_image(), three_images()], ids=["1-image", "3-images"])
def test_greedy_tokens_match_transformers(llm, reference, messages):
    token_ids, images = llm.engine.chat_request(messages)
    output = llm.chat(messages, GREEDY)
    assert output.prompt_token_ids == token_ids
    assert output.token_ids == reference_greedy(reference, token_ids, images)


def test_image_order_matters_and_each_order_matches(llm, reference):
    outputs = []
    for messages in (three_images(URLS[0], URLS[1]), three_images(URLS[1], URLS[0])):
        token_ids, images = llm.engine.chat_request(messages)
        output = llm.chat(messages, GREEDY).token_ids
        assert output == reference_greedy(reference, token_ids, images)
        outputs.append(output)
    assert outputs[0] != outputs[1]


def run_together(engine: LLMEngine, conversations, params) -> list[list[int]]:
    """Each conversation's generated tokens, all of them queued at once."""
    for i, messages in enumerate(conversations):
        token_ids, images = engine.chat_request(messages)
        engine.add_request(f"together-{i}", token_ids, params, images)
    finished = {}
    while engine.has_unfinished:
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output.token_ids
    return [finished[f"together-{i}"] for i in range(len(conversations))]


def test_batched_requests_with_images_match_alone(llm):
    messages = [one_image(URLS[i]) for i in range(3)] + [three_images()]
    alone = [llm.chat(m, GREEDY).token_ids for m in messages]
    assert run_together(llm.engine, messages, GREEDY) == alone


def test_prefix_cache_keys_on_image_content(llava_dir):
    llm = LLM(str(llava_dir), kv_cache_memory=0.01)
    engine = llm.engine
    llm.chat(one_image(URLS[0]), GREEDY)
    hits = engine.stats().num_prefix_hit_tokens
    llm.chat(one_image(URLS[0]), GREEDY)
    assert engine.stats().num_prefix_hit_tokens > hits
    hits = engine.stats().num_prefix_hit_tokens
    different = llm.chat(one_image(URLS[1]), GREEDY)
    assert engine.stats().num_prefix_hit_tokens == hits
    fresh = LLM(str(llava_dir), kv_cache_memory=0.01).chat(one_image(URLS[1]), GREEDY)
    assert different.token_ids == fresh.token_ids


def test_partial_prefix_hit_inside_an_image_reuses_cached_features(llava_dir, reference):
    """The second turn shares the first block (which ends inside the image span) with
    the first: only the image's tail positions are computed, from the embedding cache."""
    llm = LLM(str(llava_dir), kv_cache_memory=0.01)
    engine = llm.engine
    first = [{"role": "user", "content": [image_part(URLS[2]), text_part("Describe it.")]}]
    second = [{"role": "user", "content": [image_part(URLS[2]), text_part("Name the colours.")]}]
    llm.chat(first, GREEDY)
    assert engine.stats().num_image_cache_misses == 1
    token_ids, images = engine.chat_request(second)
    positions = [p for p, t in enumerate(token_ids) if t == engine.vision.image_token_id]
    assert positions[0] < engine.config.block_size <= positions[-1]
    output = llm.chat(second, GREEDY)
    assert engine.stats().num_prefix_hit_tokens == engine.config.block_size
    assert engine.stats().num_image_cache_hits == 1
    assert engine.stats().num_image_cache_misses == 1
    assert output.token_ids == reference_greedy(reference, token_ids, images)


def test_loads_the_nested_transformers_layout(llava_dir, tmp_path, llm):
    """transformers >= 4.52 keeps the weights under ``model.``; llava-hf on the Hub has
    CLIPVisionModel's ``vision_tower.vision_model.``: both load the same weights."""
    renames = [
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.", "model.vision_tower.vision_model."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ]
    for path in llava_dir.iterdir():
        if path.suffix == ".json":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    save_renamed(llava_dir / "model.safetensors", tmp_path / "model.safetensors", renames)
    engine = LLMEngine(EngineConfig(model=str(tmp_path), kv_cache_memory=0.01))
    ours = dict(engine.core.runner.model.state_dict())
    for name, tensor in llm.engine.core.runner.model.state_dict().items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)


def test_full_select_strategy_and_last_layer_features(tmp_path_factory):
    model_dir = build_tiny_llava(
        tmp_path_factory.mktemp("llava-full"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    llm = LLM(str(model_dir), kv_cache_memory=0.01)
    assert llm.engine.vision.num_image_tokens == 17
    messages = three_images()
    token_ids, images = llm.engine.chat_request(messages)
    output = llm.chat(messages, GREEDY)
    assert output.token_ids == reference_greedy(load_llava_reference(model_dir), token_ids, images)


def test_async_llm_streams_a_request_with_images(llava_dir, llm):
    messages = three_images()

    async def run() -> list[int]:
        engine = AsyncLLM(EngineConfig(model=str(llava_dir), kv_cache_memory=0.01))
        try:
            prompt = await engine.prepare_chat(messages)
            await engine.check_params(prompt, GREEDY)
            assert prompt.token_ids == llm.engine.chat_request(messages)[0]
            outputs = [out async for out in engine.generate("a", prompt, GREEDY)]
            return outputs[-1].token_ids
        finally:
            engine.shutdown()

    assert asyncio.run(run()) == llm.chat(messages, GREEDY).token_ids


def test_preemption_with_images_changes_nothing(llava_dir, llm):
    """A pool too small for every request at once: sequences preempted mid-image are
    recomputed (their image features kept) and still give the same tokens."""
    block_bytes = 2 * 2 * 2 * 16 * 16 * 4  # K+V, 2 layers, 2 kv heads, head_dim 16, fp32
    small = LLM(
        str(llava_dir),
        kv_cache_memory=10 * block_bytes / 2**30,
        max_num_batched_tokens=48,
        max_num_seqs=8,
    )
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    conversations = [one_image(URLS[i]) for i in range(4)] + [three_images()]
    want = [llm.chat(m, params).token_ids for m in conversations]
    engine = small.engine
    assert run_together(engine, conversations, params) == want
    assert engine.core.scheduler.num_preemptions > 0
    assert engine.core.block_manager.num_free_blocks == engine.core.block_manager.num_blocks


def test_an_unsupported_language_model_is_named():
    from types import SimpleNamespace

    from engine import UnsupportedModelError
    from engine.models.llava import language_model

    with pytest.raises(UnsupportedModelError, match="VILA with a 'gpt2' language model"):
        language_model(SimpleNamespace(model_type="gpt2"), "VILA")
