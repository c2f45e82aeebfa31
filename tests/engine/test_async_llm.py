"""AsyncLLM's threads: intake in workers, the core in its loop thread, outputs on the
asyncio side; a request being tokenized holds up nobody else."""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine import AsyncLLM, EngineConfig, SamplingParams

pytestmark = pytest.mark.timeout(120)


class BlockingTokenizer:
    """Intake's tokenizer for a prompt that takes as long as the test wants: the call
    waits inside (holding intake's lock) until ``release`` is set."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(timeout=60)
        return self.tokenizer(*args, **kwargs)


def test_a_prompt_being_tokenized_does_not_delay_running_streams(tiny_llama):
    llm = AsyncLLM(EngineConfig(model=str(tiny_llama), kv_cache_memory=0.01))
    inputs = llm.engine.inputs
    blocking = BlockingTokenizer(inputs.tokenizer)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)

    async def scenario() -> tuple[int, bool]:
        inputs.tokenizer = blocking
        stuck = asyncio.create_task(llm.prepare("a prompt that takes forever to tokenize"))
        await asyncio.to_thread(blocking.entered.wait, 60)
        num_tokens = 0
        async for output in llm.generate("running", [5, 6, 7], params):
            num_tokens += len(output.new_token_ids)
        # Every token came while intake was still stuck in the tokenizer.
        still_stuck = not stuck.done()
        blocking.release.set()
        await stuck
        return num_tokens, still_stuck

    try:
        assert asyncio.run(scenario()) == (40, True)
    finally:
        blocking.release.set()
        llm.shutdown()
