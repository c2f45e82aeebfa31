"""AutoAWQ GEMM checkpoints written by hand (AutoAWQ's exact tensor names, shapes, dtypes
and config keys) from a dense one, and transformers models holding exactly their values."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.quant.pack import dequantize, quantize_rtn
from tests.conftest import load_reference


def write_awq_checkpoint(
    source: Path, out_dir: Path, group_size: int, legacy: bool, not_converted: tuple[str, ...]
) -> Path:
    """RTN-quantize every decoder linear of ``source`` as AutoAWQ's GEMM format saves it:
    ``<layer>.qweight`` int32 [K, N/8], ``.qzeros`` int32 [K/G, N/8], ``.scales`` fp16
    [K/G, N]; every other tensor (biases, norms, embeddings, unconverted layers) in fp16."""
    tensors = {}
    for name, tensor in load_file(source / "model.safetensors").items():
        layer = name.removesuffix(".weight")
        is_linear = ".layers." in name and name.endswith(".weight") and tensor.dim() == 2
        if is_linear and not any(skip in layer for skip in not_converted):
            quantized = quantize_rtn(tensor, group_size)
            tensors[f"{layer}.qweight"] = quantized.qweight
            tensors[f"{layer}.qzeros"] = quantized.qzeros
            tensors[f"{layer}.scales"] = quantized.scales
        else:
            tensors[name] = tensor.to(torch.float16)
    out_dir.mkdir()
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    for path in source.iterdir():
        if path.name not in ("model.safetensors", "config.json"):
            shutil.copy(path, out_dir / path.name)
    config = json.loads((source / "config.json").read_text())
    config["torch_dtype"] = "float16"
    if legacy:  # older repositories: AutoAWQ's own keys, in quant_config.json
        quant = {"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}
        (out_dir / "quant_config.json").write_text(json.dumps(quant))
    else:
        config["quantization_config"] = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": group_size,
            "zero_point": True,
            "version": "gemm",
            "modules_to_not_convert": list(not_converted) or None,
        }
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


def dequantized_reference(awq_dir: Path, group_size: int, load=load_reference) -> nn.Module:
    """``load``'s transformers model (fp32) of a dense copy of ``awq_dir`` holding exactly
    its values, packed linears dequantized. Going through a checkpoint leaves the naming
    to transformers, whose module names need not be the names it saves under."""
    stored = load_file(awq_dir / "model.safetensors")
    tensors = {}
    for name, tensor in stored.items():
        layer, _, kind = name.rpartition(".")
        if kind == "qweight":
            scales = stored[f"{layer}.scales"].float()
            weight = dequantize(tensor, stored[f"{layer}.qzeros"], scales, group_size)
            tensors[f"{layer}.weight"] = weight.t().contiguous()
        elif kind not in ("qzeros", "scales"):
            tensors[name] = tensor.float()
    config = json.loads((awq_dir / "config.json").read_text())
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    with tempfile.TemporaryDirectory() as tmp:
        dense_dir = Path(tmp)
        save_file(tensors, dense_dir / "model.safetensors", metadata={"format": "pt"})
        (dense_dir / "config.json").write_text(json.dumps(config))
        return load(dense_dir)
