"""Checkpoint loading: sharded files, the header reader, missing weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import LLM, ModelLoadError, SamplingParams
from engine.weights import checkpoint_files, load_into, read_header
from tests.conftest import load_reference

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
PROMPT = [1, 100, 200, 300]


def test_reader_returns_exact_tensors(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(12, dtype=torch.int32).reshape(3, 4),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, tmp_path / "x.safetensors")
    # Same-dtype targets are read into directly; the fp64 one goes through a copy.
    targets = {name: torch.full_like(t, 7) for name, t in tensors.items()}
    targets["a"] = targets["a"].double()
    load_into(read_header(tmp_path / "x.safetensors"), lambda entry: targets[entry.name])
    for name, tensor in tensors.items():
        assert torch.equal(targets[name].to(tensor.dtype), tensor)


def test_shape_mismatch_is_a_load_error(tmp_path):
    save_file({"a": torch.zeros(2, 3)}, tmp_path / "x.safetensors")
    with pytest.raises(ModelLoadError, match="shape"):
        load_into(read_header(tmp_path / "x.safetensors"), lambda entry: torch.zeros(3, 2))


def test_sharded_checkpoint_loads_like_a_single_file(tiny_llama, tmp_path):
    reference = load_reference(tiny_llama)
    reference.save_pretrained(tmp_path, max_shard_size="40KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((tiny_llama / name).read_bytes())
    assert len(checkpoint_files(tmp_path)) > 1
    sharded = LLM(str(tmp_path), kv_cache_memory=0.01).generate([PROMPT], GREEDY)[0]
    single = LLM(str(tiny_llama), kv_cache_memory=0.01).generate([PROMPT], GREEDY)[0]
    assert sharded.token_ids == single.token_ids


def test_missing_weights_are_named(tiny_llama, tmp_path):
    for path in tiny_llama.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    state = load_file(tiny_llama / "model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="down_proj"):
        LLM(str(tmp_path), kv_cache_memory=0.01)


def test_index_naming_a_missing_shard(tiny_llama, tmp_path):
    for path in tiny_llama.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    index = {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="lacks shards"):
        LLM(str(tmp_path), kv_cache_memory=0.01)
