"""The checkpoints of benchmarks/bench_cpu.py: a random Qwen2 rounded to an AutoAWQ GEMM
int4 checkpoint (by `edgechat quantize`'s RTN), a dense fp32 copy holding exactly its
dequantized weights, and a GGUF of that copy that llama.cpp reads as the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.demo import write_tokenizer
from engine.quant.pack import dequantize
from engine.quant.quantizer import QuantizeConfig, quantize

LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def write_awq_and_dense(
    source_dir: Path, awq_dir: Path, dense_dir: Path, shape: dict, group_size: int
) -> None:
    torch.manual_seed(0)
    _write_random_qwen2(source_dir, shape)
    quantize(source_dir, awq_dir, QuantizeConfig(method="rtn", group_size=group_size, device="cpu"))
    _write_dequantized(awq_dir, dense_dir, group_size)
    shutil.rmtree(source_dir)


def _write_random_qwen2(out_dir: Path, shape: dict) -> None:
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    head_dim = hidden // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    out_features = dict(zip(LINEARS, (hidden, kv, kv, hidden, inter, inter, hidden)))
    in_features = dict(zip(LINEARS, (hidden,) * 6 + (inter,)))
    tensors = {
        "model.embed_tokens.weight": _random(shape["vocab_size"], hidden),
        "model.norm.weight": torch.ones(hidden, dtype=torch.float16),
    }
    for i in range(shape["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"{prefix}{norm}.weight"] = torch.ones(hidden, dtype=torch.float16)
        for name in LINEARS:
            tensors[f"{prefix}{name}.weight"] = _random(out_features[name], in_features[name])
        for name in LINEARS[:3]:  # Qwen2's q/k/v biases
            tensors[f"{prefix}{name}.bias"] = _random(out_features[name])
    out_dir.mkdir(parents=True)
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    config = dict(
        shape,
        architectures=["Qwen2ForCausalLM"],
        model_type="qwen2",
        torch_dtype="float16",
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
    )
    (out_dir / "config.json").write_text(json.dumps(config))
    write_tokenizer(out_dir)  # ids past its vocabulary decode to "": fine for timing


def _random(*shape: int) -> torch.Tensor:
    return (torch.randn(shape) * 0.02).half()


def _write_dequantized(awq_dir: Path, dense_dir: Path, group_size: int) -> None:
    stored = {}
    for shard in sorted(awq_dir.glob("*.safetensors")):
        stored.update(load_file(shard))
    tensors = {}
    for name, tensor in stored.items():
        layer, _, kind = name.rpartition(".")
        if kind == "qweight":
            scales = stored[f"{layer}.scales"].float()
            weight = dequantize(tensor, stored[f"{layer}.qzeros"], scales, group_size)
            tensors[f"{layer}.weight"] = weight.t().contiguous()  # fp32: exact
        elif kind not in ("qzeros", "scales"):
            tensors[name] = tensor
    dense_dir.mkdir(parents=True)
    save_file(tensors, dense_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((awq_dir / "config.json").read_text())
    config.pop("quantization_config")
    (dense_dir / "config.json").write_text(json.dumps(config))
    write_tokenizer(dense_dir)


# -- GGUF ---------------------------------------------------------------------------------

GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_gguf(dense_dir: Path, path: Path, linear_type: str) -> None:
    """llama.cpp's "qwen2" architecture with the dense copy's tensors: decoder linears in
    ``linear_type`` (Q4_0 or Q8_0), the tied embedding (and so the LM head) in Q8_0, norms
    and biases in fp32; a byte-level vocabulary of synthetic tokens (prompts go in as ids)."""
    import gguf

    config = json.loads((dense_dir / "config.json").read_text())
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    _add_vocabulary(writer, config["vocab_size"])
    quant = getattr(gguf.GGMLQuantizationType, linear_type)
    for name, tensor in load_file(dense_dir / "model.safetensors").items():
        array = tensor.float().numpy()
        qtype = gguf.GGMLQuantizationType.F32
        if name == "model.embed_tokens.weight":
            qtype = gguf.GGMLQuantizationType.Q8_0
        elif array.ndim == 2:
            qtype = quant
        if qtype != gguf.GGMLQuantizationType.F32:
            array = gguf.quants.quantize(array, qtype)
        writer.add_tensor(_gguf_name(name), array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    _, _, index, rest = name.split(".", 3)  # model.layers.<i>.<rest>
    for hf, ours in GGUF_LAYER_NAMES.items():
        if rest.startswith(hf):
            return f"blk.{index}.{ours}{rest[len(hf) :]}"
    raise ValueError(f"no GGUF name for {name}")


def _add_vocabulary(writer, vocab_size: int) -> None:
    """GPT-2's 256 byte tokens (llama.cpp looks the newline up among them), one merge
    (llama.cpp refuses a BPE vocabulary without merges), then filler."""
    byte_tokens = _bytes_to_unicode()
    filler = [f"<t{i}>" for i in range(vocab_size - len(byte_tokens) - 1)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([*byte_tokens, "ab", *filler])
    writer.add_token_types([1] * vocab_size)  # all normal
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in for each byte, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    stand_ins, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            stand_ins[byte] = chr(byte)
        else:
            stand_ins[byte] = chr(256 + extra)
            extra += 1
    return [stand_ins[byte] for byte in range(256)]
