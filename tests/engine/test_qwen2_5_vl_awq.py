"""Qwen2.5-VL whose language model is AutoAWQ int4 (vision tower and merger 16-bit, as
the official Qwen/Qwen2.5-VL-*-Instruct-AWQ checkpoints keep them: modules_to_not_convert
["visual"]) equals transformers on the dequantized weights; it loads under transformers'
names and under the Hub's (``visual.``, ``model.layers.``, a flat config.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine import LLM
from tests.engine.awq_fixtures import dequantized_reference, write_awq_checkpoint
from tests.engine.qwen2_5_vl_fixtures import build_tiny_qwen2_5_vl, load_qwen2_5_vl_reference
from tests.engine.test_qwen2_5_vl import (
    GREEDY,
    one_image,
    our_logits,
    reference_greedy,
    reference_logits,
    two_images,
)
from tests.engine.test_vlm_awq import GROUP_SIZE, assert_only_language_model_is_int4
from tests.engine.vlm_fixtures import save_renamed

# transformers >= 4.52 names -> the names the Hub's Qwen2.5-VL checkpoints are saved under.
HUB_PREFIXES = [("model.language_model.", "model."), ("model.visual.", "visual.")]
MESSAGES = pytest.mark.parametrize("messages", [one_image(), two_images()], ids=["1", "2"])


def hub_layout(model_dir: Path, out_dir: Path) -> Path:
    """``model_dir`` as the Hub has Qwen2.5-VL: old tensor names, and a flat config.json
    (the language model's keys at the top, M-RoPE as rope_scaling type "mrope")."""
    shutil.copytree(model_dir, out_dir)
    save_renamed(model_dir / "model.safetensors", out_dir / "model.safetensors", HUB_PREFIXES)
    config = json.loads((model_dir / "config.json").read_text())
    text = config.pop("text_config")
    rope = text.pop("rope_parameters")
    text.pop("model_type", None)
    config.update(text)
    config.update(
        rope_theta=rope["rope_theta"],
        rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]},
    )
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


@pytest.fixture(scope="module")
def qwen_awq(tmp_path_factory) -> Path:
    source = build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen") / "source")
    return write_awq_checkpoint(source, source.parent / "awq", GROUP_SIZE, False, ("visual",))


@pytest.fixture(scope="module")
def reference(qwen_awq):
    return dequantized_reference(qwen_awq, GROUP_SIZE, load_qwen2_5_vl_reference)


@pytest.fixture(scope="module", params=["transformers-layout", "hub-layout"])
def llm(request, qwen_awq) -> LLM:
    model_dir = qwen_awq
    if request.param == "hub-layout":
        model_dir = hub_layout(qwen_awq, qwen_awq.parent / "awq-hub")
    return LLM(str(model_dir), dtype="float32", kv_cache_memory=0.01, max_num_batched_tokens=64)


def test_language_model_is_int4_and_vision_is_dense(llm):
    model = llm.engine.core.runner.model
    assert_only_language_model_is_int4(model)
    assert model.visual.blocks[0].attn.qkv.weight.dtype == torch.float32


@MESSAGES
def test_logits_and_greedy_tokens_match_dequantized_transformers(llm, reference, messages):
    engine = llm.engine
    token_ids, images = engine.chat_request(messages)
    ours, tokens = our_logits(engine, token_ids, images, chunk=17)
    theirs = reference_logits(reference, token_ids + tokens, images)[len(token_ids) - 1 :]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert llm.chat(messages, GREEDY).token_ids == tokens
    assert tokens == reference_greedy(reference, token_ids, images)
