"""What ``quantize`` writes: AutoAWQ's config, names, shapes and dtypes, exact packing,
the tokenizer files; and the result loads in the engine and generates."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine import LLM, SamplingParams
from engine.quant.dense import load_dense
from engine.quant.pack import dequantize
from engine.quant.perplexity import engine_perplexity, transformers_perplexity
from engine.quant.quantizer import QuantizeConfig, quantize
from engine.quant.rtn import fake_quantize
from engine.quant.source import LayerwiseModel
from engine.quant.writer import CheckpointWriter
from tests.conftest import load_reference
from tests.quant.conftest import GROUP_SIZE, build_outlier_model, calib_ids

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_tensors(model_dir) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def test_config_is_autoawqs(outlier_llama, quantized_factory):
    out = quantized_factory(outlier_llama)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "bits": 4,
        "group_size": GROUP_SIZE,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": ["lm_head"],
    }
    assert config["torch_dtype"] == "float16"
    source = json.loads((outlier_llama / "config.json").read_text())
    for key in ("architectures", "hidden_size", "num_hidden_layers", "vocab_size"):
        assert config[key] == source[key]


@pytest.mark.parametrize("method", ["awq", "rtn"])
def test_tensor_names_shapes_and_dtypes_are_autoawqs(outlier_llama, quantized_factory, method):
    source = read_tensors(outlier_llama)
    written = read_tensors(quantized_factory(outlier_llama, method))
    expected = {}
    for name, tensor in source.items():
        module, _, param = name.rpartition(".")
        if module.rpartition(".")[2] in LINEARS and param == "weight":
            out_features, in_features = tensor.shape
            groups = in_features // GROUP_SIZE
            expected[f"{module}.qweight"] = (torch.int32, (in_features, out_features // 8))
            expected[f"{module}.qzeros"] = (torch.int32, (groups, out_features // 8))
            expected[f"{module}.scales"] = (torch.float16, (groups, out_features))
        else:  # embeddings, norms, LM head
            expected[name] = (torch.float16, tuple(tensor.shape))
    assert {name: (t.dtype, tuple(t.shape)) for name, t in written.items()} == expected


def test_rtn_checkpoint_holds_exactly_the_rounded_weights(outlier_llama, quantized_factory):
    source = read_tensors(outlier_llama)
    written = read_tensors(quantized_factory(outlier_llama, "rtn"))
    prefix = "model.layers.1.mlp.down_proj"
    restored = dequantize(
        written[f"{prefix}.qweight"],
        written[f"{prefix}.qzeros"],
        written[f"{prefix}.scales"].float(),
        GROUP_SIZE,
    )
    assert torch.equal(restored.t(), fake_quantize(source[f"{prefix}.weight"], GROUP_SIZE))
    assert torch.equal(written["model.norm.weight"], source["model.norm.weight"].half())


def test_tokenizer_and_chat_template_are_copied(outlier_llama, quantized_factory):
    out = quantized_factory(outlier_llama)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (outlier_llama / name).read_bytes()
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())


def test_quantized_checkpoint_loads_in_the_engine_and_generates(outlier_llama, quantized_factory):
    out = quantized_factory(outlier_llama)
    llm = LLM(str(out), kv_cache_memory=0.01)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    (output,) = llm.generate(["The quick brown fox"], params)
    assert len(output.token_ids) == 8
    # Our int4 model code and the dequantized transformers reference score alike.
    parts = [calib_ids(num_samples=1, seq_len=64, seed=3)[0].tolist()]
    ours = engine_perplexity(str(out), parts).value
    theirs = transformers_perplexity(out, parts).value
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_qwen2_keeps_qkv_biases_and_tied_embeddings(tmp_path):
    model_dir = build_outlier_model(
        tmp_path / "qwen2", "qwen2", hidden_size=64, intermediate_size=128, num_key_value_heads=2
    )
    out = quantize(
        model_dir,
        tmp_path / "out",
        QuantizeConfig(group_size=GROUP_SIZE, num_samples=4),
        calib_ids=calib_ids(num_samples=4),
    )
    source, written = read_tensors(model_dir), read_tensors(out)
    for name in ("q_proj", "k_proj", "v_proj"):  # not scaled under GQA: kept exactly
        bias = f"model.layers.0.self_attn.{name}.bias"
        assert torch.equal(written[bias], source[bias].half())
    assert "lm_head.weight" not in written and "lm_head.qweight" not in written
    quantized = load_dense(out)
    assert quantized.lm_head.weight is quantized.model.embed_tokens.weight
    ids = calib_ids(num_samples=2, seq_len=32, seed=9)
    with torch.no_grad():
        expected = load_reference(model_dir)(ids).logits.log_softmax(-1)
        got = quantized(ids).logits.log_softmax(-1)
    assert (expected.exp() * (expected - got)).sum(-1).mean() < 0.2  # KL divergence
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    (output,) = LLM(str(out), kv_cache_memory=0.01).generate([[5, 6, 7]], params)
    assert len(output.token_ids) == 4


def test_one_decoder_layer_is_resident_at_a_time(outlier_llama, tmp_path, monkeypatch):
    num_resident = []
    materialize = LayerwiseModel.materialize

    def counting(self, name):
        module = materialize(self, name)
        layers = [
            layer for layer in self.layers if layer.input_layernorm.weight.device.type != "meta"
        ]
        num_resident.append(len(layers))
        return module

    monkeypatch.setattr(LayerwiseModel, "materialize", counting)
    config = QuantizeConfig(group_size=GROUP_SIZE, num_samples=4)
    quantize(outlier_llama, tmp_path / "out", config, calib_ids=calib_ids(num_samples=4))
    assert num_resident == [0, 1, 1]  # the embedding (for layer 0's input), then each layer


def test_writer_shards_large_checkpoints_and_writes_an_index(tmp_path):
    tensors = {f"t{i}": torch.full((256,), float(i)) for i in range(5)}
    source = tmp_path / "source"
    source.mkdir()
    (source / "tokenizer.json").write_text("{}")
    with CheckpointWriter(tmp_path / "out", max_shard_bytes=2048) as writer:
        for name, tensor in tensors.items():
            writer.add({name: tensor})
        out = writer.commit({"architectures": ["LlamaForCausalLM"]}, source)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert len(set(index["weight_map"].values())) == 3  # 2 KiB each: 2 + 2 + 1 tensors
    assert index["metadata"]["total_size"] == 5 * 256 * 4
    assert {name: t.tolist() for name, t in read_tensors(out).items()} == {
        name: t.tolist() for name, t in tensors.items()
    }
    assert (out / "tokenizer.json").exists()
    assert not list(tmp_path.glob(".out.*"))
