"""benchmarks/bench_cpu.py's pieces on a tiny shape (the benchmark itself is not a test):
its three checkpoints hold the same model, as transformers and gguf's own reader see them,
and its decode timing counts every token after the first of each request."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmarks.bench_cpu import TINY, decode_tokens_per_s, prompts
from benchmarks.cpu_checkpoints import write_awq_and_dense, write_gguf
from engine import LLM, SamplingParams
from tests.conftest import load_reference
from tests.engine.awq_fixtures import dequantized_reference

SHAPE = dict(TINY, num_hidden_layers=1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_cpu")
    write_awq_and_dense(root / "source", root / "awq", root / "dense", SHAPE, 128)
    write_gguf(root / "dense", root / "model.gguf", "Q4_0")
    return root


def test_dense_copy_is_the_awq_model(checkpoints):
    ids = torch.tensor([prompts(1, 12, SHAPE["vocab_size"])[0]])
    awq = dequantized_reference(checkpoints / "awq", 128)
    dense = load_reference(checkpoints / "dense")
    with torch.no_grad():
        torch.testing.assert_close(dense(ids).logits, awq(ids).logits, atol=1e-5, rtol=1e-5)
    config = json.loads((checkpoints / "awq" / "config.json").read_text())
    assert config["quantization_config"]["version"] == "gemm"
    assert "quantization_config" not in json.loads((checkpoints / "dense/config.json").read_text())


def test_gguf_holds_the_dense_weights(checkpoints):
    reader = gguf.GGUFReader(checkpoints / "model.gguf")
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert reader.fields["qwen2.attention.head_count_kv"].contents() == 2
    tensors = {t.name: t for t in reader.tensors}
    dense = load_file(checkpoints / "dense" / "model.safetensors")
    assert len(tensors) == len(dense) and "output.weight" not in tensors  # tied
    expected_types = {
        "token_embd.weight": "Q8_0",
        "blk.0.attn_q.weight": "Q4_0",
        "blk.0.ffn_down.weight": "Q4_0",
        "blk.0.attn_q.bias": "F32",
    }
    for name, type_name in expected_types.items():
        assert tensors[name].tensor_type.name == type_name
    pairs = {
        "token_embd.weight": ("model.embed_tokens.weight", 0.01),
        "blk.0.attn_k.weight": ("model.layers.0.self_attn.k_proj.weight", 0.1),
        "blk.0.ffn_down.weight": ("model.layers.0.mlp.down_proj.weight", 0.1),
        "blk.0.attn_v.bias": ("model.layers.0.self_attn.v_proj.bias", 1e-6),
    }
    for name, (hf_name, tolerance) in pairs.items():
        stored = tensors[name]
        values = gguf.quants.dequantize(stored.data, stored.tensor_type)
        want = dense[hf_name].float().numpy()
        values = values.reshape(want.shape)  # GGUF lists shapes innermost first
        error = np.linalg.norm(values - want) / np.linalg.norm(want)
        assert error < tolerance, (name, error)


def test_decode_timing_counts_tokens_after_the_first(checkpoints):
    llm = LLM(str(checkpoints / "dense"), kv_cache_memory=0.01, max_model_len=64)
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    batch = prompts(3, 8, SHAPE["vocab_size"])
    steps = []
    step = llm.engine.step

    def counted_step():
        outputs = step()
        steps.append(sum(len(o.new_token_ids) for o in outputs))
        return outputs

    llm.engine.step = counted_step
    assert decode_tokens_per_s(llm.engine, batch, params) > 0
    assert sum(steps) == 3 * 5 and not llm.engine.has_unfinished
