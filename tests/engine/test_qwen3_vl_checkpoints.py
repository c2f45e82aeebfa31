"""Qwen3-VL checkpoints as the Hub has them load and match transformers: a config.json
written by transformers 4.57 (M-RoPE as ``rope_scaling`` beside ``rope_theta`` in the
text config, the vision config labelled ``qwen3_vl``), and tied embeddings (the 2B and
4B keep no lm_head)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine import LLM
from tests.engine.qwen3_vl_fixtures import build_tiny_qwen3_vl, load_qwen3_vl_reference
from tests.engine.test_qwen2_5_vl import (
    CONVERSATIONS,
    our_logits,
    reference_greedy,
    reference_logits,
)


def with_4_57_config(model_dir: Path, out_dir: Path) -> Path:
    shutil.copytree(model_dir, out_dir)
    config = json.loads((model_dir / "config.json").read_text())
    text = config["text_config"]
    rope = text.pop("rope_parameters")
    text["rope_theta"] = rope.pop("rope_theta")
    text["rope_scaling"] = rope
    text["tie_word_embeddings"] = config["tie_word_embeddings"]
    config["vision_config"]["model_type"] = "qwen3_vl"
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def checkpoints(request, tmp_path_factory) -> tuple[Path, Path]:
    """(transformers 5's checkpoint, the same with a 4.57 config.json)."""
    source = build_tiny_qwen3_vl(
        tmp_path_factory.mktemp("qwen3_vl") / "source", tie_word_embeddings=request.param
    )
    with safe_open(source / "model.safetensors", "pt") as f:
        names = list(f.keys())
    assert ("lm_head.weight" in names) != request.param
    return source, with_4_57_config(source, source.parent / "hub")


@pytest.mark.parametrize("layout", [0, 1], ids=["transformers-5", "transformers-4.57"])
def test_logits_and_greedy_tokens_match_transformers(checkpoints, layout):
    reference = load_qwen3_vl_reference(checkpoints[0])
    llm = LLM(str(checkpoints[layout]), kv_cache_memory=0.01)
    token_ids, images = llm.engine.chat_request(CONVERSATIONS["two-images"])
    ours, tokens = our_logits(llm.engine, token_ids, images, chunk=1000)
    theirs = reference_logits(reference, token_ids + tokens, images)[len(token_ids) - 1 :]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert tokens == reference_greedy(reference, token_ids, images)
