"""An AWQ checkpoint as a dense transformers model: every packed linear dequantized to a
float weight. The reference for accuracy (it computes what int4 kernels compute, up to
accumulation order) with no AWQ package installed; not a fast path."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from engine.errors import UnsupportedModelError
from engine.loader import load_config
from engine.quant.config import read_quant_config
from engine.quant.layout import layout_for
from engine.quant.pack import dequantize
from engine.weights import checkpoint_files


def load_dense(model_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The transformers model of ``model_dir`` on CPU in ``dtype``, AWQ weights dequantized."""
    quant_config = read_quant_config(model_dir)
    if quant_config is None:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    config = load_config(model_dir)
    state = {}
    for path in checkpoint_files(model_dir):
        state.update(load_file(path))
    for key in [k for k in state if k.endswith(".qweight")]:
        prefix = key.removesuffix(".qweight")
        weight = dequantize(
            state.pop(key),
            state.pop(f"{prefix}.qzeros"),
            state.pop(f"{prefix}.scales").float(),
            quant_config.group_size,
        )
        state[f"{prefix}.weight"] = weight.t().contiguous()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    model.tie_weights()
    # Buffers that no checkpoint holds (the rotary tables) are built afresh.
    rotary_name = layout_for(config).rotary
    parent_name, _, child = rotary_name.rpartition(".")
    rotary = type(model.get_submodule(rotary_name))(config)
    setattr(model.get_submodule(parent_name), child, rotary)
    missing = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise UnsupportedModelError(f"{model_dir} lacks weights: {', '.join(missing[:5])}")
    return model.eval()
