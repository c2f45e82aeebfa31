"""An independent reading of AutoAWQ GEMM checkpoints, to check the quantizer's results
with none of its code: unpacked from the format's definition (docs: ARCHITECTURE.md,
"AutoAWQ GEMM checkpoints"), loaded into a plain transformers model, scored with a
plain next-token loss. Deliberately a second implementation of engine/quant/pack.py's
``dequantize`` and perplexity.py, so that a bug shared by writer and reader would show.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from transformers import AutoConfig, AutoModelForCausalLM

# Nibble i (bits 4i..4i+3) of packed column c holds output column 8c + NIBBLE_COLUMN[i].
NIBBLE_COLUMN = (0, 2, 4, 6, 1, 3, 5, 7)


def unpack(packed: np.ndarray) -> np.ndarray:
    """int32 [R, C/8] -> int64 [R, C], values in [0, 15]."""
    bits = packed.astype(np.int64) & 0xFFFFFFFF  # two's complement -> the 32 raw bits
    values = np.empty((packed.shape[0], packed.shape[1] * 8), dtype=np.int64)
    for nibble, column in enumerate(NIBBLE_COLUMN):
        values[:, column::8] = (bits >> (4 * nibble)) & 0xF
    return values


def dequantize(qweight, qzeros, scales, group_size: int) -> torch.Tensor:
    """The nn.Linear weight [N, K], fp32: ``w[k, n] = (q[k, n] - z[k//G, n]) * s[k//G, n]``."""
    q, z = unpack(qweight), unpack(qzeros)
    group = np.arange(q.shape[0]) // group_size
    weight = (q - z[group]).astype(np.float32) * scales.astype(np.float32)[group]
    return torch.from_numpy(np.ascontiguousarray(weight.T))


def load_dequantized(model_dir: Path) -> torch.nn.Module:
    """The transformers model (fp32, CPU) of an AutoAWQ GEMM checkpoint, or of a 16-bit one."""
    raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    quant = raw.pop("quantization_config", None)
    config = AutoConfig.for_model(**raw)
    state = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(path))
    for key in [k for k in state if k.endswith(".qweight")]:
        prefix = key.removesuffix(".qweight")
        state[f"{prefix}.weight"] = dequantize(
            state.pop(key),
            state.pop(f"{prefix}.qzeros"),
            state.pop(f"{prefix}.scales"),
            quant["group_size"],
        )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = {k: torch.as_tensor(v).float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    assert not unexpected and set(missing) <= tied, (missing, unexpected)
    model.tie_weights()
    return model.eval()


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor) -> float:
    """exp(mean next-token NLL) over ``windows`` [num_windows, seq_len], each on its own."""
    nll, count = 0.0, 0
    for window in windows:
        logits = model(window[None]).logits[0, :-1].float()
        nll += float(F.cross_entropy(logits, window[1:], reduction="sum"))
        count += window.numel() - 1
    return math.exp(nll / count)
