"""AutoAWQ GEMM checkpoints, built by hand in AutoAWQ's exact tensor names, shapes, dtypes
and config keys, load unchanged and generate what transformers generates from the same
model with every quantized linear replaced by its dequantized weight."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import LLM, ModelLoadError, SamplingParams
from engine.config import EngineConfig
from engine.errors import UnsupportedModelError
from engine.layers.awq_linear import AWQLinear, MergedAWQLinear
from engine.layers.cpu_quant import Int4Linear
from engine.llm_engine import LLMEngine
from engine.quant.config import parse_awq_config
from tests.engine.awq_fixtures import dequantized_reference, write_awq_checkpoint
from tests.engine.test_model_parity import PROMPT, engine_logits_per_step

# K (128 in, 256 for down_proj) is a multiple of every group size tested.
AWQ_TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
    ),
]


@pytest.fixture(scope="session")
def awq_factory(tiny_model_factory, tmp_path_factory):
    """``factory(arch, group_size, legacy=False, not_converted=()) -> (source, awq_dir)``."""
    built: dict = {}

    def factory(arch: str, group_size: int, legacy: bool = False, not_converted=()):
        key = (arch, group_size, legacy, tuple(not_converted))
        if key not in built:
            source = tiny_model_factory(arch, **AWQ_TINY)
            out_dir = tmp_path_factory.mktemp("awq") / "checkpoint"
            awq_dir = write_awq_checkpoint(
                source, out_dir, group_size, legacy, tuple(not_converted)
            )
            built[key] = source, awq_dir
        return built[key]

    return factory


# (architecture, group size, quant_config.json instead of config.json, unconverted layers)
CHECKPOINTS = [
    ("llama", 32, False, ()),
    ("llama", 64, True, ()),
    ("qwen2", 32, False, ("down_proj",)),  # q/k/v biases; one dense linear per layer
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch, group_size, legacy, not_converted", CHECKPOINTS)
def test_awq_checkpoint_matches_dequantized_transformers(
    awq_factory, device, arch, group_size, legacy, not_converted
):
    source, awq_dir = awq_factory(arch, group_size, legacy, not_converted)
    reference = dequantized_reference(awq_dir, group_size)
    # fp32 also on a GPU: the kernels then run with IEEE fp32 dots, so logits stay close.
    engine = LLMEngine(
        EngineConfig(model=str(awq_dir), device=device, dtype="float32", kv_cache_memory=0.01)
    )
    layers = engine.core.runner.model.model.layers
    # On a CPU the int4 layers are repacked for torch's kernel (engine/layers/cpu_quant.py).
    assert isinstance(layers[0].self_attn.qkv_proj, (MergedAWQLinear, Int4Linear))
    assert isinstance(layers[0].mlp.down_proj, (AWQLinear, Int4Linear)) != bool(not_converted)
    for step, (ours, theirs) in enumerate(engine_logits_per_step(engine, PROMPT, 6, reference)):
        torch.testing.assert_close(ours.cpu(), theirs, atol=1e-4, rtol=1e-4, msg=f"step {step}")

    num_new = 16
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor([PROMPT]), max_new_tokens=num_new, min_new_tokens=num_new, do_sample=False
        )[0, len(PROMPT) :].tolist()
    llm = LLM(str(awq_dir), device=device, dtype="float32", kv_cache_memory=0.01)
    params = SamplingParams(max_tokens=num_new, temperature=0, ignore_eos=True)
    assert llm.generate([PROMPT], params)[0].token_ids == expected


def test_missing_awq_tensor_is_named(awq_factory, tmp_path):
    _, awq_dir = awq_factory("llama", 32)
    shutil.copytree(awq_dir, tmp_path / "broken")
    state = load_file(awq_dir / "model.safetensors")
    del state["model.layers.1.self_attn.k_proj.qzeros"]
    save_file(state, tmp_path / "broken" / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"layers\.1\.self_attn\.k_proj\.qzeros"):
        LLM(str(tmp_path / "broken"), kv_cache_memory=0.01)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": "gemv"}, "version 'gemv'"),
        ({"version": "exllama"}, "version 'exllama'"),
        ({"version": "marlin"}, "version 'marlin'"),
        ({"zero_point": False}, "without zero points"),
        ({"bits": 8}, "8-bit"),
        ({"group_size": 48}, "group size 48"),
        ({"quant_method": "gptq"}, "method 'gptq'"),
    ],
)
def test_unsupported_awq_configs_say_what_is_supported(change, message):
    raw = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}
    with pytest.raises(UnsupportedModelError, match=message) as info:
        parse_awq_config({**raw, "version": "gemm", **change})
    assert "AutoAWQ GEMM" in str(info.value)


def test_legacy_keys_are_read():
    config = parse_awq_config({"w_bit": 4, "q_group_size": 64, "zero_point": True})
    assert config.group_size == 64 and config.modules_to_not_convert == ()


def test_rejected_checkpoint_fails_at_load(awq_factory, tmp_path):
    _, awq_dir = awq_factory("llama", 32)
    shutil.copytree(awq_dir, tmp_path / "exllama")
    config = json.loads((awq_dir / "config.json").read_text())
    config["quantization_config"]["version"] = "exllama"
    (tmp_path / "exllama" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="gemm"):
        LLM(str(tmp_path / "exllama"), kv_cache_memory=0.01)


def test_partly_unconverted_fused_layer_is_refused(awq_factory, tmp_path):
    _, awq_dir = awq_factory("llama", 32, not_converted=("k_proj",))
    with pytest.raises(UnsupportedModelError, match="all int4 or all dense"):
        LLM(str(awq_dir), kv_cache_memory=0.01)
