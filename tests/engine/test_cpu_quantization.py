"""The CPU weight path (engine/layers/cpu_quant.py): AutoAWQ checkpoints repacked for
torch's int4 kernel, and ``--quantization int4/int8`` of dense checkpoints, each held to
transformers running the same dequantized weights in fp32."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine import LLM, EngineError, ModelLoadError, SamplingParams, cpu_dtype
from engine.config import EngineConfig
from engine.layers import cpu_quant
from engine.layers.awq_linear import AWQLinear
from engine.layers.cpu_quant import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    check_quantization,
    plan_cpu_weights,
    weight_bytes,
)
from engine.llm_engine import LLMEngine
from engine.quant.pack import rtn_codes
from kernels import cpu_native
from kernels.cpu_linear import quantize_int8
from server.cli import build_parser, engine_kwargs
from tests.conftest import load_reference
from tests.engine.awq_fixtures import dequantized_reference, write_awq_checkpoint
from tests.engine.test_model_parity import PROMPT, engine_logits_per_step

# K (128 in, 256 for down_proj) is a multiple of group 128, N of 16.
CPU_TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4)
NUM_NEW = 16
GREEDY = SamplingParams(max_tokens=NUM_NEW, temperature=0, ignore_eos=True)
# bf16 matmuls (and, with dtype bfloat16, the whole model) against the fp32 reference:
# logits of magnitude ~6 here drift by 0.11-0.22 at most over 5-7 steps, measured.
BF16_TOLERANCE = dict(atol=0.3, rtol=0.03)
# The native kernels' int8 activations (blocks of 32) against the fp32 reference: logits
# of magnitude ~6.6 here drift by 0.10-0.42 at most over 5-7 steps, measured.
INT8_ACTIVATION_TOLERANCE = dict(atol=0.5, rtol=0.03)


def decoder_linears(model: nn.Module) -> list[nn.Module]:
    linears = []
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        linears += [attention.qkv_proj, attention.o_proj, mlp.gate_up_proj, mlp.down_proj]
    return linears


def greedy_reference(reference: nn.Module) -> list[int]:
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([PROMPT]), max_new_tokens=NUM_NEW, min_new_tokens=NUM_NEW, do_sample=False
        )
    return out[0, len(PROMPT) :].tolist()


@pytest.fixture(scope="module")
def awq_checkpoint(tiny_model_factory, tmp_path_factory):
    """``factory(arch, group_size) -> AutoAWQ dir``, every decoder linear int4."""
    built: dict = {}

    def factory(arch: str, group_size: int) -> Path:
        if (arch, group_size) not in built:
            source = tiny_model_factory(arch, **CPU_TINY)
            out_dir = tmp_path_factory.mktemp("cpu-awq") / "checkpoint"
            built[arch, group_size] = write_awq_checkpoint(source, out_dir, group_size, False, ())
        return built[arch, group_size]

    return factory


@pytest.mark.parametrize("arch, group_size", [("llama", 32), ("qwen2", 128)])
def test_awq_on_cpu_runs_torch_int4_and_matches_dequantized_transformers(
    awq_checkpoint, arch, group_size
):
    awq_dir = awq_checkpoint(arch, group_size)
    reference = dequantized_reference(awq_dir, group_size)
    engine = LLMEngine(EngineConfig(model=str(awq_dir), dtype="float32", kv_cache_memory=0.01))
    model = engine.core.runner.model
    assert all(isinstance(layer, Int4Linear) for layer in decoder_linears(model))
    assert not any(isinstance(m, AWQLinear) for m in model.modules())
    for step, (ours, theirs) in enumerate(engine_logits_per_step(engine, PROMPT, 6, reference)):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    llm = LLM(str(awq_dir), dtype="float32", kv_cache_memory=0.01)
    assert llm.generate([PROMPT], GREEDY)[0].token_ids == greedy_reference(reference)


def test_awq_on_cpu_in_bf16_stays_near_the_fp32_reference(awq_checkpoint):
    """``bfloat16`` runs everything in it, torch's int4 kernel included."""
    awq_dir = awq_checkpoint("qwen2", 128)
    reference = dequantized_reference(awq_dir, 128)
    engine = LLMEngine(EngineConfig(model=str(awq_dir), dtype="bfloat16", kv_cache_memory=0.01))
    down_proj = engine.core.runner.model.model.layers[0].mlp.down_proj
    assert down_proj.native is None and down_proj.scales_and_zeros.dtype == torch.bfloat16
    for step, (ours, theirs) in enumerate(engine_logits_per_step(engine, PROMPT, 6, reference)):
        torch.testing.assert_close(ours.float(), theirs, **BF16_TOLERANCE, msg=f"step {step}")


def test_awq_on_cpu_by_default_runs_the_int8_activation_kernels(awq_checkpoint, monkeypatch):
    """``auto`` on a CPU: fp32 model (even where the CPU has native bf16), int4 matmuls
    in the native kernels (int8 activations), near the fp32 reference
    (kernels/test_cpu_native.py holds them to their exact twins)."""
    monkeypatch.setattr(cpu_dtype, "read_cpuinfo", lambda: "flags\t\t: avx512f avx512_bf16\n")
    awq_dir = awq_checkpoint("qwen2", 128)
    reference = dequantized_reference(awq_dir, 128)
    engine = LLMEngine(EngineConfig(model=str(awq_dir), kv_cache_memory=0.01))
    assert engine.dtype == torch.float32
    model = engine.core.runner.model
    assert all(layer.native is not None for layer in decoder_linears(model))
    for step, (ours, theirs) in enumerate(engine_logits_per_step(engine, PROMPT, 6, reference)):
        torch.testing.assert_close(ours, theirs, **INT8_ACTIVATION_TOLERANCE, msg=f"step {step}")


def dequantized_dense_copy(
    source: Path, out_dir: Path, quantization: str, kernel_dtype: torch.dtype = torch.float32
) -> Path:
    """``source`` with the weights ``--quantization`` gives it, dequantized to fp32 by
    the format's own arithmetic: decoder linears int4 RTN g128 or int8, embedding and
    (untied) LM head int8, int8 scales stored in ``kernel_dtype``."""
    tensors = {}
    for name, tensor in load_file(source / "model.safetensors").items():
        if ".layers." in name and name.endswith("proj.weight"):
            if quantization == "int4":
                q, zeros, scales = rtn_codes(tensor, 128)
                tensor = ((q - zeros) * scales).reshape(tensor.shape)
            else:
                codes, scales = quantize_int8(tensor, kernel_dtype)
                tensor = codes.float() * scales.float()[:, None]
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            codes, scales = quantize_int8(tensor, kernel_dtype)
            tensor = codes.float() * scales.float()[:, None]
        tensors[name] = tensor.contiguous()
    out_dir.mkdir()
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    for path in source.iterdir():
        if path.name != "model.safetensors":
            (out_dir / path.name).write_bytes(path.read_bytes())
    return out_dir


def expected_weight_bytes(source: Path, quantization: str, kernel_bytes: int) -> int:
    """The quantized model's bytes, from the checkpoint's shapes and the formats alone;
    scales (and int4 offsets) take ``kernel_bytes`` each, the rest stays fp32."""
    total = 0  # NOTE: a tied LM head is not in the checkpoint: the embedding's bytes serve
    for name, tensor in load_file(source / "model.safetensors").items():
        if ".layers." in name and name.endswith("proj.weight"):
            out_features, in_features = tensor.shape
            if quantization == "int4":  # two codes a byte; a (scale, offset) a group
                num_groups = in_features // 128
                offsets = num_groups * out_features * 2 * kernel_bytes
                total += out_features * in_features // 2 + offsets
            else:  # a byte a weight; a scale a row
                total += out_features * in_features + out_features * kernel_bytes
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            total += tensor.numel() + tensor.shape[0] * kernel_bytes
        else:  # norms and biases, fp32
            total += tensor.numel() * 4
    return total


@pytest.mark.parametrize("quantization", ["int4", "int8"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # untied, tied embeddings
def test_dense_quantization_on_cpu_generates_and_reports_its_memory(
    tiny_model_factory, tmp_path, caplog, arch, quantization
):
    """In fp32 (asked for: the exact kernels) the quantized model is transformers' on
    the dequantized weights, token for token."""
    source = tiny_model_factory(arch, **CPU_TINY)
    config = EngineConfig(
        model=str(source), dtype="float32", quantization=quantization, kv_cache_memory=0.01
    )
    with caplog.at_level(logging.INFO, logger="engine.layers.cpu_quant"):
        engine = LLMEngine(config)
    model = engine.core.runner.model
    linear_class = Int4Linear if quantization == "int4" else Int8Linear
    assert all(isinstance(layer, linear_class) for layer in decoder_linears(model))
    assert isinstance(model.model.embed_tokens, Int8Embedding)
    assert isinstance(model.lm_head, Int8Linear)
    tied = arch == "qwen2"
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied

    expected = expected_weight_bytes(source, quantization, kernel_bytes=4)
    assert weight_bytes(model) == expected
    dense = sum(t.numel() * 4 for t in load_file(source / "model.safetensors").values())
    [message] = [r.getMessage() for r in caplog.records if "CPU weights" in r.getMessage()]
    assert f"weights {dense / 2**20:.1f} MiB -> {expected / 2**20:.1f} MiB" in message
    assert "`edgechat quantize` (AWQ) is more accurate" in message

    reference = load_reference(dequantized_dense_copy(source, tmp_path / "dq", quantization))
    for step, (ours, theirs) in enumerate(engine_logits_per_step(engine, PROMPT, 4, reference)):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    llm = LLM(str(source), dtype="float32", quantization=quantization, kv_cache_memory=0.01)
    assert llm.generate([PROMPT], GREEDY)[0].token_ids == greedy_reference(reference)


@pytest.mark.parametrize("quantization", ["int4", "int8"])
def test_dense_quantization_by_default_runs_the_int8_activation_kernels(
    tiny_model_factory, tmp_path, quantization
):
    source = tiny_model_factory("qwen2", **CPU_TINY)
    engine = LLMEngine(
        EngineConfig(model=str(source), quantization=quantization, kv_cache_memory=0.01)
    )
    model = engine.core.runner.model
    assert all(layer.native is not None for layer in [*decoder_linears(model), model.lm_head])
    assert model.lm_head.scales.dtype == torch.float32
    assert weight_bytes(model) == expected_weight_bytes(source, quantization, kernel_bytes=4)
    reference = load_reference(dequantized_dense_copy(source, tmp_path / "dq", quantization))
    for step, (ours, theirs) in enumerate(engine_logits_per_step(engine, PROMPT, 4, reference)):
        torch.testing.assert_close(ours, theirs, **INT8_ACTIVATION_TOLERANCE, msg=f"step {step}")


@pytest.mark.parametrize("quantization", ["int4", "int8"])
def test_dense_quantization_without_the_native_kernels_runs_torch_bf16_kernels(
    tiny_model_factory, tmp_path, monkeypatch, quantization
):
    """Where the native kernels cannot be built (no C compiler), or are turned off,
    ``auto`` runs torch's kernels in bf16 under the fp32 model."""
    monkeypatch.setenv("EDGECHAT_NATIVE_CPU_KERNELS", "0")
    assert cpu_quant.native_kernels() is None
    source = tiny_model_factory("qwen2", **CPU_TINY)
    engine = LLMEngine(
        EngineConfig(model=str(source), quantization=quantization, kv_cache_memory=0.01)
    )
    model = engine.core.runner.model
    assert model.lm_head.native is None and model.lm_head.scales.dtype == torch.bfloat16
    assert weight_bytes(model) == expected_weight_bytes(source, quantization, kernel_bytes=2)
    dequantized = dequantized_dense_copy(source, tmp_path / "dq", quantization, torch.bfloat16)
    reference = load_reference(dequantized)
    for step, (ours, theirs) in enumerate(engine_logits_per_step(engine, PROMPT, 4, reference)):
        torch.testing.assert_close(ours.float(), theirs, **BF16_TOLERANCE, msg=f"step {step}")


def test_a_failed_native_build_is_a_warning_and_no_kernels(monkeypatch, caplog):
    def fail(cache_dir):
        raise cpu_native.NativeBuildError("no C compiler found (set CC, or install gcc)")

    monkeypatch.setattr(cpu_native, "load", fail)
    with caplog.at_level(logging.WARNING, logger="engine.layers.cpu_quant"):
        assert cpu_quant._built_native_kernels.__wrapped__() is None
    assert "torch's bf16 kernels run the quantized layers" in caplog.text
    assert "no C compiler found" in caplog.text


def test_int4_refuses_layers_group_128_cannot_take(tiny_model_factory):
    source = tiny_model_factory("llama")  # hidden 64: no whole group of 128
    with pytest.raises(ModelLoadError, match=r"int4 cannot take model\.layers\.0\..*128"):
        LLM(str(source), quantization="int4", kv_cache_memory=0.01)


def test_int8_on_an_awq_checkpoint_is_refused(awq_checkpoint):
    with pytest.raises(ModelLoadError, match="AWQ int4 already"):
        LLM(str(awq_checkpoint("llama", 32)), quantization="int8", kv_cache_memory=0.01)


def test_quantization_is_cpu_only_and_validated():
    with pytest.raises(ModelLoadError, match="runs on CPU only"):
        check_quantization("int4", False, torch.device("cuda"))
    check_quantization("none", True, torch.device("cuda"))
    with pytest.raises(EngineError, match="quantization must be one of none, int8, int4"):
        EngineConfig(quantization="int3")


def test_quantization_flag_and_environment_reach_the_engine_config(monkeypatch):
    assert engine_kwargs(build_parser().parse_args(["serve"]))["quantization"] == "none"
    args = build_parser().parse_args(["serve", "--quantization", "int4"])
    assert engine_kwargs(args)["quantization"] == "int4"
    monkeypatch.setenv("EDGECHAT_QUANTIZATION", "int8")
    assert engine_kwargs(build_parser().parse_args(["serve"]))["quantization"] == "int8"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--quantization", "int2"])


def test_awq_layer_torch_cannot_pack_stays_on_the_dequantizing_path(caplog):
    """AWQ packs out-features by 8, torch's int4 layout by 16: such a layer still runs."""
    holder = nn.Module()
    holder.proj = AWQLinear(64, 24, bias=False, group_size=32)
    holder.proj.qweight.random_(-(2**31), 2**31 - 1)
    holder.proj.qzeros.random_(-(2**31), 2**31 - 1)
    holder.proj.scales.uniform_(0.01, 0.02)
    with caplog.at_level(logging.WARNING, logger="engine.layers.cpu_quant"):
        plan = plan_cpu_weights(holder, "none", torch.bfloat16)
    assert plan.linears == {}
    assert "proj stays on the dequantizing AWQ path" in caplog.text
    assert "24 out-features is not a multiple of 16" in caplog.text
