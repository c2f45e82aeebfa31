"""Running a decoder layer, or a block inside it, over the calibration batch."""

from __future__ import annotations

import inspect

import torch
from torch import nn

# Tokens per forward call: bounds attention's [chunk, heads, L, L] scores and every
# intermediate, whatever the number of calibration samples.
MAX_CHUNK_TOKENS = 4096


class BlockRunner:
    """Runs modules over activations ``[num_samples, seq_len, features]`` a few samples at
    a time. Modules whose forward takes ``position_embeddings`` (a decoder layer, its
    attention) get the rotary tables for positions 0..seq_len-1 and no attention mask,
    which transformers' SDPA attention treats as causal."""

    def __init__(self, rotary: nn.Module, seq_len: int, dtype: torch.dtype, device: torch.device):
        positions = torch.arange(seq_len, device=device)[None]
        # The rotary module reads only the dtype and device of its first argument.
        probe = torch.empty(0, dtype=dtype, device=device)
        self.position_embeddings = rotary(probe, positions)
        self.samples_per_chunk = max(1, MAX_CHUNK_TOKENS // seq_len)

    def call(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)`` for one chunk ``x`` [samples, seq_len, features]."""
        if "position_embeddings" in inspect.signature(module.forward).parameters:
            out = module(x, position_embeddings=self.position_embeddings, attention_mask=None)
        else:
            out = module(x)
        # Attention returns (output, attention weights).
        return out[0] if isinstance(out, tuple) else out

    def chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split(self.samples_per_chunk))

    def outputs(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.call(module, chunk) for chunk in self.chunks(x)])


def record_inputs(
    layer: nn.Module, runner: BlockRunner, x: torch.Tensor, names: list[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run ``layer`` over ``x``; return the input each linear in ``names`` saw
    ([num_samples, seq_len, in_features]) and the layer's output (the next layer's input)."""
    inputs: dict[str, torch.Tensor] = {}
    num_filled = dict.fromkeys(names, 0)

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            seen = args[0]  # [chunk, seq_len, in_features]
            if name not in inputs:
                inputs[name] = seen.new_empty(x.shape[0], *seen.shape[1:])
            start = num_filled[name]
            inputs[name][start : start + seen.shape[0]] = seen
            num_filled[name] += seen.shape[0]

        return hook

    handles = [layer.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        output = runner.outputs(layer, x)
    finally:
        for handle in handles:
            handle.remove()
    return inputs, output
