"""A checkpoint read one piece at a time, so the whole model is never resident.

The transformers model is built on the meta device (shapes, no memory); a decoder layer
(or the embedding) is materialized on the working device only while it is worked on,
its weights read tensor by tensor from the safetensors, then sent back to meta. For a VLM
only its language model is built (from its text config), so module names are the
language model's; ``checkpoint_name`` maps them to the checkpoint's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from engine.errors import ModelLoadError
from engine.quant.layout import DecoderLayout
from engine.weights import TensorEntry, checkpoint_files, load_into, read_header

logger = logging.getLogger(__name__)

# The language model's embeddings, decoder layers and final norm, in a *ForCausalLM.
MODULE_BODY = "model."


class LayerwiseModel:
    def __init__(
        self,
        model_dir: Path,
        config: PretrainedConfig,
        layout: DecoderLayout,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.config = config
        self.layout = layout
        self.dtype = dtype
        self.device = device
        # NOTE: SDPA, because the BlockRunner relies on its causal default (no mask given).
        with torch.device("meta"):
            self.skeleton = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        self.skeleton.requires_grad_(False)
        self.entries = {
            entry.name: entry for path in checkpoint_files(model_dir) for entry in read_header(path)
        }
        self.body = self._checkpoint_body()

    def _checkpoint_body(self) -> str:
        """The checkpoint's name for the module tree's ``model.``: the first of the
        layout's candidates under which the first decoder layer is stored."""
        first_layer = self.layout.layer_prefix(0).removeprefix(MODULE_BODY)
        for body in self.layout.checkpoint_bodies:
            if any(name.startswith(body + first_layer) for name in self.entries):
                return body
        return self.layout.checkpoint_bodies[0]  # materialize says what is missing

    def checkpoint_name(self, name: str) -> str:
        """The checkpoint's name for ``name``, a module or parameter under ``model.``."""
        return self.body + name.removeprefix(MODULE_BODY)

    @property
    def layers(self) -> nn.ModuleList:
        return self.skeleton.get_submodule(self.layout.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_name(self, index: int) -> str:
        return self.layout.layer_prefix(index).rstrip(".")

    def materialize(self, name: str) -> nn.Module:
        """The module at ``name`` on the working device, filled from the checkpoint."""
        module = self.skeleton.get_submodule(name)
        module.to(self.dtype).to_empty(device=self.device)
        prefix = self.checkpoint_name(name)
        params = {f"{prefix}.{key}": p for key, p in module.named_parameters()}
        missing = sorted(set(params) - set(self.entries))
        if missing:
            raise ModelLoadError(f"the checkpoint lacks {', '.join(missing[:5])}")
        unused = [k for k in self.entries if k.startswith(f"{prefix}.") and k not in params]
        if unused:
            logger.warning("ignoring checkpoint tensors %s", ", ".join(unused))
        load_into([self.entries[key] for key in params], lambda entry: params[entry.name].data)
        return module

    def release(self, module: nn.Module) -> None:
        module.to("meta")

    def rotary(self) -> nn.Module:
        rotary_cls = type(self.skeleton.get_submodule(self.layout.rotary))
        return rotary_cls(self.config).to(self.device)

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The first decoder layer's input for ``input_ids`` [num_samples, seq_len]."""
        embed_tokens = self.materialize(self.layout.embed_tokens)
        try:
            return embed_tokens(input_ids.to(self.device))
        finally:
            self.release(embed_tokens)

    def entries_outside_layers(self) -> list[TensorEntry]:
        """Checkpoint tensors that are not in a decoder layer (embeddings, final norm,
        LM head; a VLM's vision tower and projector), in file order."""
        prefix = self.checkpoint_name(self.layout.layers) + "."
        outside = [entry for name, entry in self.entries.items() if not name.startswith(prefix)]
        return sorted(outside, key=lambda entry: (entry.path, entry.offset))
