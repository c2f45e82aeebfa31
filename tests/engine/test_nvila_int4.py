"""NVILA with an int4 language model: llm/ in AutoAWQ GEMM format, or TinyChat's ``.pt``
(as llm-awq's ``--vila-20`` path writes NVILA's), generates what the fp32 reference
generates with each quantized linear replaced by its dequantized weight."""

from __future__ import annotations

import pytest

from engine import LLM
from tests.engine.awq_fixtures import dequantized_reference, write_awq_checkpoint
from tests.engine.nvila_fixtures import NvilaReference, build_tiny_nvila
from tests.engine.test_nvila import GREEDY, one_image
from tests.engine.test_tinychat_loading import assert_same_weights, write_tinychat_checkpoint
from tests.engine.test_vlm_awq import assert_only_language_model_is_int4, vila_with_llm

GROUP_SIZE = 32


@pytest.fixture(scope="module")
def nvila_dirs(tmp_path_factory):
    """A tiny NVILA-Lite, the same with llm/ in AutoAWQ format, and with llm/ in TinyChat's."""
    root = tmp_path_factory.mktemp("nvila-int4")
    source = build_tiny_nvila(root / "source", lite=True)
    awq_llm = write_awq_checkpoint(source / "llm", root / "llm-awq", GROUP_SIZE, False, ())
    tinychat_llm = write_tinychat_checkpoint(
        awq_llm, root / "llm-tinychat", "NVILA-Lite-2B-w4-g32-awq.pt"
    )
    reference = NvilaReference(source)
    reference.llm = dequantized_reference(awq_llm, GROUP_SIZE)
    return (
        reference,
        vila_with_llm(source, awq_llm, root / "awq"),
        vila_with_llm(source, tinychat_llm, root / "tinychat"),
    )


def assert_matches_dequantized_reference(llm: LLM, reference: NvilaReference) -> None:
    messages, prompt, images = one_image(lite=True)
    prompt += "<|im_start|>assistant\n"
    expected = reference.greedy(prompt, reference.image_units(images), GREEDY.max_tokens)
    assert llm.chat(messages, GREEDY).token_ids == expected


def test_autoawq_llm_matches_the_dequantized_reference(nvila_dirs):
    reference, awq_dir, _ = nvila_dirs
    llm = LLM(str(awq_dir), dtype="float32", kv_cache_memory=0.01, max_num_batched_tokens=64)
    assert_only_language_model_is_int4(llm.engine.core.runner.model)
    assert_matches_dequantized_reference(llm, reference)


def test_tinychat_llm_equals_autoawq_and_matches_the_reference(nvila_dirs):
    reference, awq_dir, tinychat_dir = nvila_dirs
    assert not list((tinychat_dir / "llm").glob("*.safetensors"))
    llm = LLM(str(tinychat_dir), dtype="float32", kv_cache_memory=0.01)
    autoawq = LLM(str(awq_dir), dtype="float32", kv_cache_memory=0.01)
    assert_same_weights(llm.engine.core.runner.model, autoawq.engine.core.runner.model)
    assert_matches_dequantized_reference(llm, reference)
