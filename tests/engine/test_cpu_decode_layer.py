"""The native decode layer (engine/layers/cpu_decode_layer.py): a decoder layer's decode
step in one C call, held to the module path it replaces, output and KV cache, to the
bit; and the layers and steps it must leave to the modules."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.layers.cpu_decode_layer import NativeDecodeLayer, use_native_decode_layers
from engine.layers.cpu_quant import native_kernels
from engine.llm_engine import LLMEngine
from tests.engine.test_cpu_quantization import CPU_TINY

NUM_NEW = 6
GREEDY = SamplingParams(max_tokens=NUM_NEW, temperature=0, ignore_eos=True)
PROMPTS = [[5, 17, 3, 99, 41, 7, 23], [11, 2], [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70]]


class Shadow:
    """Wraps a layer's NativeDecodeLayer: every call it takes also runs the module path
    on a copy of the KV cache as it was, and both results must be equal."""

    def __init__(self, layer):
        self.layer, self.native = layer, layer.native_decode
        self.taken = self.declined = 0

    def __call__(self, positions, hidden, residual, meta):
        attention = self.layer.self_attn.attn
        k_before, v_before = attention.k_cache.clone(), attention.v_cache.clone()
        out = self.native(positions, hidden, residual, meta)
        if out is None:
            self.declined += 1
            return None
        self.taken += 1
        k_native, v_native = attention.k_cache.clone(), attention.v_cache.clone()
        attention.k_cache.copy_(k_before), attention.v_cache.copy_(v_before)
        self.layer.native_decode = None
        try:
            expected = self.layer(positions, hidden, residual, meta)
        finally:
            self.layer.native_decode = self
        assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])
        assert torch.equal(attention.k_cache, k_native)
        assert torch.equal(attention.v_cache, v_native)
        return out


def generate(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    return [output.token_ids for output in llm.generate(prompts, GREEDY)]


@pytest.mark.parametrize("quantization", ["int4", "int8"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # no biases, q/k/v biases and tied
def test_native_decode_layers_equal_the_modules_to_the_bit(tiny_model_factory, arch, quantization):
    source = tiny_model_factory(arch, **CPU_TINY)
    llm = LLM(str(source), quantization=quantization, kv_cache_memory=0.01)
    model = llm.engine.core.runner.model
    layers = model.model.layers
    assert all(isinstance(layer.native_decode, NativeDecodeLayer) for layer in layers)
    shadows = [Shadow(layer) for layer in layers]
    for layer, shadow in zip(layers, shadows):
        layer.native_decode = shadow
    # Three sequences at once, then on their own: batched decodes and single ones.
    together = generate(llm, PROMPTS)
    alone = [generate(llm, [prompt])[0] for prompt in PROMPTS]
    assert together == alone
    for shadow in shadows:
        # every decode step of both runs, and none of the prefills
        assert shadow.taken == (1 + len(PROMPTS)) * (NUM_NEW - 1)
        assert shadow.declined == 1 + len(PROMPTS)
    assert use_native_decode_layers(model, None) == 0
    assert all(layer.native_decode is None for layer in layers)
    assert [generate(llm, [prompt])[0] for prompt in PROMPTS] == alone


def test_layers_the_native_layer_cannot_describe_keep_the_modules(tiny_model_factory):
    """Qwen3's q/k norms; torch's bf16 kernels (an explicit --dtype bfloat16); a dense
    fp32 model (no int8-activation linears)."""
    for arch, config in [
        ("qwen3", dict(quantization="int4")),
        ("qwen2", dict(quantization="int4", dtype="bfloat16")),
        ("qwen2", {}),
    ]:
        source = tiny_model_factory(arch, **CPU_TINY)
        engine = LLMEngine(EngineConfig(model=str(source), kv_cache_memory=0.01, **config))
        model = engine.core.runner.model
        assert all(layer.native_decode is None for layer in model.model.layers), (arch, config)
        assert use_native_decode_layers(model, native_kernels()) == 0


def test_without_the_native_kernels_no_layer_is_native(tiny_model_factory, monkeypatch):
    monkeypatch.setenv("EDGECHAT_NATIVE_CPU_KERNELS", "0")
    source = tiny_model_factory("qwen2", **CPU_TINY)
    engine = LLMEngine(EngineConfig(model=str(source), quantization="int4", kv_cache_memory=0.01))
    assert all(layer.native_decode is None for layer in engine.core.runner.model.model.layers)
