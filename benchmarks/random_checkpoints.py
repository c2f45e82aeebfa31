"""Random Llama-family checkpoints of real models' shapes, fp16 or AutoAWQ GEMM int4,
written the way the Hub ships them (one safetensors shard per decoder layer plus an
index), for the GPU benchmarks. Weights are random (any int32 is a valid int4 packing):
the numbers measure speed, never quality.

Tensors are drawn on the GPU when there is one: drawing billions of values on the CPU
takes minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.demo import write_tokenizer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def write_llama_checkpoint(out_dir: Path, config: dict, group_size: int | None) -> None:
    """``config``: a LlamaConfig as a dict (``architectures`` and ``model_type`` included).
    With a group size, every decoder linear is stored as AutoAWQ GEMM tensors."""
    config = dict(config, torch_dtype="float16")
    if group_size:
        config["quantization_config"] = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": group_size,
            "zero_point": True,
            "version": "gemm",
        }
    out_dir.mkdir(parents=True)
    (out_dir / "config.json").write_text(json.dumps(config))
    write_tokenizer(out_dir)  # ids past its vocabulary decode to "": fine for timing
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    shards = {
        "model-head.safetensors": {
            "model.embed_tokens.weight": random_dense(vocab, hidden),
            "lm_head.weight": random_dense(vocab, hidden),
            "model.norm.weight": torch.ones(hidden, dtype=torch.float16),
        }
    }
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        tensors = {
            prefix + "input_layernorm.weight": torch.ones(hidden, dtype=torch.float16),
            prefix + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.float16),
        }
        for name, (out_features, in_features) in _linear_shapes(config).items():
            if group_size:
                tensors.update(_awq(prefix + name, in_features, out_features, group_size))
            else:
                tensors[prefix + name + ".weight"] = random_dense(out_features, in_features)
        shards[f"model-{i:05d}.safetensors"] = tensors
    weight_map = {}
    for file_name, tensors in shards.items():
        save_file(tensors, out_dir / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file_name))
    index = {"metadata": {}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index))


def random_dense(*shape: int) -> torch.Tensor:
    return (torch.randn(shape, device=DEVICE) * 0.02).half().cpu()


def _linear_shapes(config: dict) -> dict[str, tuple[int, int]]:  # name -> (out, in) features
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim
    return {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }


def _awq(name: str, in_features: int, out_features: int, group_size: int) -> dict:
    num_groups, packed = in_features // group_size, out_features // 8
    scales = torch.rand(num_groups, out_features, device=DEVICE) * 0.004
    return {
        f"{name}.qweight": _random_int32(in_features, packed),
        f"{name}.qzeros": _random_int32(num_groups, packed),
        f"{name}.scales": scales.half().cpu(),
    }


def _random_int32(*shape: int) -> torch.Tensor:
    return torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, device=DEVICE).cpu()
