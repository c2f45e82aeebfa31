"""The CPU load quantizes each layer as soon as it is read (engine/fill.py): the layers it
builds are bit for bit those of quantizing the whole loaded model, and torch never holds
much more than the quantized model while it loads (counted allocation by allocation by
torch's profiler, not by RSS)."""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.profiler import ProfilerActivity, profile

from engine.fill import fill_parameters
from engine.layers import cpu_quant
from engine.layers.awq_linear import AWQLinear
from engine.layers.cpu_quant import Int4Linear, Int8Embedding, Int8Linear, weight_bytes
from engine.loader import build_model, load_config, load_model
from engine.quant.config import read_quant_config
from engine.weights import checkpoint_entries
from kernels.cpu_linear import quantize_int8
from tests.engine.awq_fixtures import write_awq_checkpoint
from tests.engine.test_tinychat_loading import write_tinychat_checkpoint

CPU = torch.device("cpu")
# K (128 in, 256 for down_proj) is a multiple of group 128, N of 16; 8 layers, so that
# the dense model is several times one layer's quantization temporaries.
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_hidden_layers=8)
# 100 rows of 128 fp32 values a chunk (whole tiles of 4): the 2048-row tables take 20
# chunks and a shorter one.
CHUNK_BYTES = 100 * 128 * 4


@pytest.fixture(scope="module")
def checkpoint(tiny_model_factory, tmp_path_factory):
    """``factory(kind) -> dir``: "dense" (llama: untied LM head), "tied" (qwen2), "awq"
    (the qwen2 one as AutoAWQ GEMM, group 128)."""
    built: dict[str, Path] = {}

    def factory(kind: str) -> Path:
        if kind not in built:
            if kind == "awq":
                out_dir = tmp_path_factory.mktemp("awq") / "checkpoint"
                built[kind] = write_awq_checkpoint(factory("tied"), out_dir, 128, False, ())
            else:
                built[kind] = tiny_model_factory("llama" if kind == "dense" else "qwen2", **SHAPE)
        return built[kind]

    return factory


@pytest.fixture(autouse=True)
def small_table_chunks(monkeypatch):
    monkeypatch.setattr(cpu_quant, "INT8_TABLE_CHUNK_BYTES", CHUNK_BYTES)


def load(model_dir: Path, quantization: str, kernel_dtype: torch.dtype) -> nn.Module:
    return load_model(
        model_dir, load_config(model_dir), torch.float32, CPU, quantization, kernel_dtype
    )


def whole_model_quantized(
    model_dir: Path, quantization: str, kernel_dtype: torch.dtype
) -> dict[str, nn.Module]:
    """The quantized layers by name, made the way the load made them before it went layer
    by layer: the whole model filled first, then each layer through its constructor."""
    model = build_model(load_config(model_dir), read_quant_config(model_dir), torch.float32, CPU)
    fill_parameters(model, checkpoint_entries(model_dir))
    layers = {}
    for i, layer in enumerate(model.model.layers):
        linears = {
            "self_attn.qkv_proj": layer.self_attn.qkv_proj,
            "self_attn.o_proj": layer.self_attn.o_proj,
            "mlp.gate_up_proj": layer.mlp.gate_up_proj,
            "mlp.down_proj": layer.mlp.down_proj,
        }
        for name, linear in linears.items():
            if isinstance(linear, AWQLinear):
                quantized = Int4Linear.from_awq(linear, kernel_dtype)
            elif quantization == "int4":
                quantized = Int4Linear.from_dense(linear, 128, kernel_dtype)
            else:
                quantized = Int8Linear.from_dense(linear, kernel_dtype)
            layers[f"model.layers.{i}.{name}"] = quantized
    embedding = model.model.embed_tokens.weight
    weight, scales = quantize_int8(embedding, kernel_dtype)
    layers["model.embed_tokens"] = Int8Embedding(weight, scales, embedding.dtype)
    layers["lm_head"] = Int8Linear.from_dense(model.lm_head, kernel_dtype)
    return layers


@pytest.mark.parametrize("requested", ["float32", "auto"])  # torch's exact kernels; the default
@pytest.mark.parametrize(
    "kind, quantization", [("dense", "int4"), ("dense", "int8"), ("tied", "int8"), ("awq", "int4")]
)
def test_layers_quantized_as_read_equal_the_whole_model_quantized(
    checkpoint, kind, quantization, requested
):
    kernel_dtype = cpu_quant.kernel_dtype(requested, CPU) or torch.float32
    model_dir = checkpoint(kind)
    model = load(model_dir, quantization, kernel_dtype)
    assert_same_layers(model, whole_model_quantized(model_dir, quantization, kernel_dtype))
    assert not any(t.is_meta for t in model.state_dict().values())
    tied = kind != "dense"
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def assert_same_layers(model: nn.Module, expected: dict[str, nn.Module]) -> None:
    for name, reference in expected.items():
        layer = model.get_submodule(name)
        assert type(layer) is type(reference), name
        assert layer.extra_repr() == reference.extra_repr(), name
        ours, theirs = layer.state_dict(), reference.state_dict()
        assert ours.keys() == theirs.keys(), name
        for key, tensor in theirs.items():
            assert ours[key].dtype == tensor.dtype, f"{name}.{key}"
            assert torch.equal(ours[key], tensor), f"{name}.{key}"


def test_tinychat_tensors_quantized_as_they_come_equal_the_whole_model_quantized(
    checkpoint, tmp_path
):
    """A TinyChat ``.pt`` arrives as in-memory tensors, not safetensors entries (the int8
    table sliced, not read): the same layers come out."""
    awq_dir = write_awq_checkpoint(checkpoint("tied"), tmp_path / "awq", 32, False, ())
    tinychat_dir = write_tinychat_checkpoint(
        awq_dir, tmp_path / "tinychat", "qwen2-w4-g32-awq-v2.pt"
    )
    model = load(tinychat_dir, "int4", torch.float32)
    assert_same_layers(model, whole_model_quantized(awq_dir, "int4", torch.float32))


def test_awq_without_quantization_repacks_as_read_and_keeps_the_embedding(checkpoint):
    model_dir = checkpoint("awq")
    model = load(model_dir, "none", torch.float32)
    expected = whole_model_quantized(model_dir, "none", torch.float32)
    down_proj = "model.layers.7.mlp.down_proj"
    assert torch.equal(
        model.get_submodule(down_proj).packed_weight, expected[down_proj].packed_weight
    )
    assert isinstance(model.model.embed_tokens, nn.Embedding)


def torch_allocations(fn) -> tuple[int, int]:
    """(the most bytes that torch's CPU allocator held at once for tensors allocated while
    ``fn`` ran, the largest of those allocations), from the profiler's record of every
    allocation and free."""
    # No garbage of earlier tests freed meanwhile (it would count against this one).
    gc.collect()
    gc.disable()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        gc.enable()
    # NOTE: kineto_results holds the raw "[memory]" records (+bytes allocated, -freed);
    # the aggregated events attribute those made inside an op to the op instead.
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = largest = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        held += record.nbytes()
        peak = max(peak, held)
        largest = max(largest, record.nbytes())
    return peak, largest


@pytest.mark.parametrize(
    "kind, quantization", [("dense", "int4"), ("dense", "int8"), ("tied", "int4"), ("awq", "int4")]
)
def test_load_holds_the_quantized_model_and_one_layer_at_most(checkpoint, kind, quantization):
    """Filling the dense model first held all of it (5.8-6.8 MB here, against 1.0-1.8 MB
    quantized); now the excess is one layer, dense, with its quantizer's temporaries (1-2x
    the layer, measured), and an int8 table is never whole in fp32."""
    model_dir = checkpoint(kind)
    loaded = []
    peak, largest = torch_allocations(
        lambda: loaded.append(load(model_dir, quantization, torch.float32))
    )
    config = load_config(model_dir)
    largest_layer = 2 * config.intermediate_size * config.hidden_size * 4  # gate_up, fp32
    assert peak <= weight_bytes(loaded[0]) + 3 * largest_layer
    assert largest <= largest_layer < config.vocab_size * config.hidden_size * 4


def test_a_tensor_stored_twice_is_ignored_once_its_layer_is_quantized(checkpoint, tmp_path, caplog):
    shutil.copytree(checkpoint("dense"), tmp_path, dirs_exist_ok=True)
    name = "model.layers.0.mlp.down_proj.weight"
    save_file({name: load_file(tmp_path / "model.safetensors")[name]}, tmp_path / "x.safetensors")
    with caplog.at_level(logging.WARNING, logger="engine.fill"):
        model = load(tmp_path, "int8", torch.float32)
    assert f"ignoring checkpoint tensor {name}: model.layers.0.mlp.down_proj is loaded" in (
        caplog.text
    )
    assert isinstance(model.model.layers[0].mlp.down_proj, Int8Linear)
