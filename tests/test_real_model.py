"""The engine on a real trained model (SmolLM2-135M-Instruct, tests/real_model.py): what
random weights cannot show, a right answer, and agreement with transformers on real text."""

from __future__ import annotations

import pytest
import torch
import transformers

from engine import LLM, SamplingParams
from engine.quant.perplexity import engine_perplexity, windows
from tests.conftest import load_reference
from tests.quant.independent import perplexity
from tests.real_model import python_docs

NUM_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def llm(real_model):
    return LLM(str(real_model), device="cpu", max_model_len=1024, kv_cache_memory=0.25)


@pytest.fixture(scope="module")
def reference(real_model):
    return load_reference(real_model)


def test_answers_the_capital_of_france(llm):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = llm.chat(question, SamplingParams(max_tokens=16, temperature=0))
    assert answer.text == "The capital of France is Paris."


def test_greedy_text_matches_transformers(llm, reference, real_model):
    tokenizer = transformers.AutoTokenizer.from_pretrained(real_model)
    prompts = [python_docs("held-out")[start : start + 600] for start in (0, 90_000)]
    ours = llm.generate(prompts, SamplingParams(max_tokens=NUM_NEW_TOKENS, temperature=0))
    for prompt, output in zip(prompts, ours):
        ids = tokenizer(prompt, return_tensors="pt")
        expected = reference.generate(
            **ids, max_new_tokens=NUM_NEW_TOKENS, do_sample=False, pad_token_id=0
        )[0, ids.input_ids.shape[1] :]
        assert output.token_ids == expected.tolist()


def test_perplexity_matches_transformers(real_model, reference):
    """Logit-level agreement over whole windows of real text, through the paged KV cache."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(real_model)
    ids = tokenizer(python_docs("held-out")).input_ids
    parts = windows(ids, 256, max_tokens=512)
    ours = engine_perplexity(str(real_model), parts, device="cpu").value
    expected = perplexity(reference, torch.tensor(parts))
    assert ours == pytest.approx(expected, rel=1e-4)
    assert 2 < expected < 30  # a trained model on English prose, not a random one
