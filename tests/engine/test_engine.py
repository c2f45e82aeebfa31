"""The engine end to end on a tiny model: batching, preemption, prefix cache, leaks."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.llm_engine import LLMEngine

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
PROMPTS = [[1] + [(37 * i + 11 * j) % 2000 + 4 for j in range(3 + 5 * i)] for i in range(8)]


def alone(llm: LLM, prompt: list[int], params: SamplingParams = GREEDY) -> list[int]:
    return llm.generate([prompt], params)[0].token_ids


def assert_all_blocks_free(engine: LLMEngine) -> None:
    assert engine.core.block_manager.num_free_blocks == engine.core.block_manager.num_blocks
    assert not engine.core.requests and not engine.has_unfinished


@pytest.fixture(scope="module")
def llm(tiny_llama) -> LLM:
    return LLM(str(tiny_llama), kv_cache_memory=0.01)


@pytest.fixture(scope="module")
def expected(llm) -> list[list[int]]:
    return [alone(llm, prompt) for prompt in PROMPTS]


def test_batch_of_eight_equals_each_alone(llm, expected):
    outputs = llm.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outputs] == expected
    assert_all_blocks_free(llm.engine)


def test_staggered_arrivals_equal_each_alone(llm, expected):
    engine = llm.engine
    results: dict[str, list[int]] = {}
    pending = list(enumerate(PROMPTS))
    while pending or engine.has_unfinished:
        if pending:  # one new request joins every other step, mid-flight
            index, prompt = pending.pop(0)
            engine.add_request(f"stagger-{index}", prompt, GREEDY)
        for output in engine.step() + engine.step():
            if output.finished:
                results[output.request_id] = output.token_ids
    assert [results[f"stagger-{i}"] for i in range(len(PROMPTS))] == expected
    assert_all_blocks_free(engine)


def test_chunked_prefill_gives_the_same_tokens(tiny_llama, expected):
    chunked = LLM(str(tiny_llama), kv_cache_memory=0.01, max_num_batched_tokens=8, max_num_seqs=8)
    assert [o.token_ids for o in chunked.generate(PROMPTS, GREEDY)] == expected


def test_preemption_under_a_small_pool_changes_nothing(tiny_llama, expected):
    # 8 blocks of 16 tokens cannot hold 8 sequences of up to 48 tokens at once.
    block_bytes = 2 * 2 * 2 * 16 * 16 * 4  # K+V, 2 layers, 2 kv heads, head_dim 16, fp32
    small = LLM(str(tiny_llama), kv_cache_memory=8 * block_bytes / 2**30)
    assert small.engine.core.block_manager.num_blocks == 8
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    reference = LLM(str(tiny_llama), kv_cache_memory=0.01)
    want = [o.token_ids for o in reference.generate(PROMPTS, params)]
    got = [o.token_ids for o in small.generate(PROMPTS, params)]
    assert small.engine.core.scheduler.num_preemptions > 0
    assert got == want
    assert_all_blocks_free(small.engine)


def test_seeded_sampling_is_independent_of_the_batch(llm):
    params = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=1234)
    single = alone(llm, PROMPTS[3], params)
    others = SamplingParams(max_tokens=5, temperature=1.0)
    batched = llm.generate(PROMPTS, [params if i == 3 else others for i in range(8)])
    assert batched[3].token_ids == single
    other_seed = alone(llm, PROMPTS[3], SamplingParams(max_tokens=16, temperature=0.9, seed=99))
    assert other_seed != single


def test_prefix_cache_hit_on_a_shared_three_block_prefix(llm):
    engine = llm.engine
    shared = [1] + [(7 * j) % 1900 + 4 for j in range(3 * 16)]
    first = llm.generate([shared + [5, 6, 7]], GREEDY)[0]
    hits_before = engine.core.block_manager.num_prefix_hit_tokens
    second = llm.generate([shared + [5, 6, 7]], GREEDY)[0]
    assert second.num_cached_tokens == 3 * 16
    assert engine.core.block_manager.num_prefix_hit_tokens - hits_before == 3 * 16
    assert second.token_ids == first.token_ids
    uncached = LLM(str(engine.model_dir), kv_cache_memory=0.01, enable_prefix_caching=False)
    assert alone(uncached, shared + [5, 6, 7]) == first.token_ids


def test_abort_frees_blocks_at_once(llm):
    engine = llm.engine
    engine.add_request("to-abort", PROMPTS[7], SamplingParams(max_tokens=100, ignore_eos=True))
    engine.add_request("waiting", PROMPTS[6], SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    final = engine.abort("to-abort")
    assert final.finished and final.finish_reason == "abort"
    assert engine.abort("waiting").finish_reason == "abort"
    assert engine.abort("unknown") is None
    assert_all_blocks_free(engine)


def test_stop_conditions(llm):
    free_run = llm.generate([PROMPTS[2]], SamplingParams(max_tokens=12, temperature=0))[0]
    stop_token = free_run.token_ids[4]
    stopped = llm.generate(
        [PROMPTS[2]], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop_token])
    )[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free_run.token_ids[: free_run.token_ids.index(stop_token) + 1]
    text = free_run.text
    assert len(text) > 6
    stop = text[3:6]
    cut = llm.generate([PROMPTS[2]], SamplingParams(max_tokens=12, temperature=0, stop=[stop]))[0]
    assert cut.finish_reason == "stop" and cut.text == text[: text.index(stop)]


def test_streamed_deltas_add_up_to_the_text(llm):
    engine = llm.engine
    engine.add_request(
        "stream", PROMPTS[5], SamplingParams(max_tokens=20, temperature=0, logprobs=2)
    )
    pieces, new_ids, final = [], [], None
    while engine.has_unfinished:
        for output in engine.step():
            pieces.append(output.new_text)
            new_ids += output.new_token_ids
            final = output
    assert "".join(pieces) == final.text
    assert new_ids == final.token_ids
    assert final.text == llm.tokenizer.decode(final.token_ids, skip_special_tokens=True)
    assert len(final.logprobs) == 20 and all(len(lp.top) == 2 for lp in final.logprobs)


def test_chat_uses_the_template(llm):
    output = llm.chat([{"role": "user", "content": "Hi!"}], GREEDY)
    rendered = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi!"}], add_generation_prompt=True, tokenize=False
    )
    assert output.prompt_token_ids == llm.tokenizer(rendered, add_special_tokens=False).input_ids
    assert len(output.token_ids) == 12


def test_a_prompt_longer_than_the_token_budget_runs_alone(tiny_llama, llm):
    # Steps that only prefill chunks sample nothing; the engine must not trip on that.
    long_prompt = [1] + [(13 * j) % 1900 + 4 for j in range(60)]
    chunked = LLM(str(tiny_llama), kv_cache_memory=0.01, max_num_batched_tokens=16, max_num_seqs=4)
    output = chunked.generate([long_prompt], GREEDY)[0]
    assert output.finish_reason == "length"
    assert output.token_ids == alone(llm, long_prompt)
