"""Our models against transformers on the same random weights, in fp32 on CPU."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from tests.conftest import ARCHITECTURES, load_reference

PROMPT = [1, 17, 300, 42, 999, 5, 77, 1500, 23, 8, 640, 12, 3, 250, 901, 66, 31, 7, 1024]


def engine_logits_per_step(engine: LLMEngine, prompt: list[int], num_steps: int, reference):
    """Prefill ``prompt`` and decode ``num_steps`` tokens through our runner, feeding the
    reference's greedy tokens; yield (our logits, reference logits) for each step."""
    bm = BlockManager(engine.core.block_manager.num_blocks, engine.config.block_size)
    seq = Sequence("parity", prompt, SamplingParams(), engine.config.block_size)
    tokens = list(prompt)
    for _ in range(num_steps + 1):
        bm.allocate(seq, len(seq))
        batch = ScheduledBatch()
        batch.add(seq, seq.num_uncomputed_tokens)
        ours = engine.core.runner.run(batch).logits[0]
        seq.num_computed_tokens = len(seq)
        with torch.no_grad():
            theirs = reference(torch.tensor([tokens])).logits[0, -1]
        yield ours, theirs
        next_token = int(theirs.argmax())
        tokens.append(next_token)
        seq.append_token(next_token)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_prefill_and_decode_logits_match_transformers(tiny_model_factory, arch):
    model_dir = tiny_model_factory(arch)
    engine = LLMEngine(EngineConfig(model=str(model_dir), kv_cache_memory=0.01))
    reference = load_reference(model_dir)
    for step, (ours, theirs) in enumerate(engine_logits_per_step(engine, PROMPT, 12, reference)):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4, msg=f"step {step}")


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_greedy_tokens_match_transformers_generate(tiny_model_factory, arch):
    model_dir = tiny_model_factory(arch)
    llm = LLM(str(model_dir), kv_cache_memory=0.01)
    reference = load_reference(model_dir)
    num_new = 24
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor([PROMPT]),
            max_new_tokens=num_new,
            min_new_tokens=num_new,
            do_sample=False,
        )[0, len(PROMPT) :].tolist()
    params = SamplingParams(max_tokens=num_new, temperature=0, ignore_eos=True)
    (output,) = llm.generate([PROMPT], params)
    assert output.token_ids == expected
    assert output.finish_reason == "length"
