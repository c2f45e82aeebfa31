"""From a model name to a loaded model: Hub resolution, HF config, and weights copied
tensor by tensor into a model built on the meta device (never two copies in memory)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from engine.errors import ModelLoadError, UnsupportedModelError
from engine.layers.awq_linear import convert_to_awq
from engine.layers.cpu_quant import check_quantization, prepare_cpu_weights
from engine.models.registry import model_class_for
from engine.models.vila import VilaConfig
from engine.quant.config import AWQConfig, read_quant_config
from engine.quant.tinychat import FILE_PATTERN, find_tinychat_checkpoint, open_tinychat_checkpoint
from engine.weights import TensorEntry, checkpoint_entries, is_split_checkpoint, load_into

logger = logging.getLogger(__name__)

HUB_FILE_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.jinja",
    "tokenizer*",
    "*.txt",
    "*.model",
    FILE_PATTERN,  # TinyChat int4 weights (in llm/ of VILA's AWQ repositories)
]


def resolve_model_dir(model: str) -> Path:
    """A local checkpoint directory for ``model`` (a path, or a Hub ID to download)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} has no config.json: not a Hugging Face checkpoint")
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(f"model {model!r} is neither a checkpoint directory nor a Hub ID")
    return _download(model)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    logger.info("fetching %s from the Hugging Face Hub", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS))
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the Hub cannot "
            "be reached (offline?); download it first or pass a local directory"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelLoadError(f"cannot fetch model {repo_id!r} from the Hub: {e}") from None


def load_config(model_dir: Path) -> PretrainedConfig | VilaConfig:
    try:
        if is_split_checkpoint(model_dir):
            return VilaConfig(model_dir)
        return AutoConfig.from_pretrained(model_dir)
    except ModelLoadError:  # already says what is wrong (a ValueError too)
        raise
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read the config of {model_dir}: {e}") from None


def load_model(
    model_dir: Path,
    config: PretrainedConfig,
    dtype: torch.dtype,
    device: torch.device,
    quantization: str = "none",
    kernel_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build the model for ``config`` and fill it from the checkpoint: safetensors (dense,
    or AutoAWQ GEMM int4 as found on disk), or for the language model a TinyChat ``.pt``
    (int4, converted to AutoAWQ GEMM while it is copied in). On a CPU the int4 layers
    are then repacked for torch's kernels and ``quantization`` is applied, their
    matmuls in ``kernel_dtype`` (default: ``dtype``; engine/layers/cpu_quant.py)."""
    split = is_split_checkpoint(model_dir)
    tinychat_path = find_tinychat_checkpoint(model_dir)
    converted: Iterable[tuple[str | None, torch.Tensor]] = ()
    converted_qweights: list[str | None] = []
    if tinychat_path is None:
        # VILA keeps its language model, the only part AutoAWQ quantizes, in llm/.
        quant_config = read_quant_config(model_dir / "llm" if split else model_dir)
        entries = checkpoint_entries(model_dir)
    else:
        logger.info("loading the language model's int4 weights from %s", tinychat_path)
        tinychat = open_tinychat_checkpoint(tinychat_path)
        quant_config = AWQConfig(group_size=tinychat.group_size)
        entries = checkpoint_entries(model_dir, with_language_model=False)
        part = "llm." if split else ""
        converted = ((part + name, t) for name, t in tinychat.tensors(device))
        converted_qweights = [f"{part}{layer}.qweight" for layer in tinychat.quantized_layers]
    check_quantization(quantization, quant_config is not None, device)
    model = build_model(config, quant_config, dtype, device)
    rename = model.checkpoint_name
    entries = _renamed(entries, rename)
    converted = ((rename(name), t) for name, t in converted)
    converted_qweights = [rename(name) for name in converted_qweights]
    qweights = [e.name for e in entries if e.name.endswith(".qweight")] + converted_qweights
    _check_quantized_scope(qweights, model.quantized_scope)
    _fill_parameters(model, entries, converted)
    if device.type == "cpu":
        prepare_cpu_weights(model, quantization, kernel_dtype or dtype)
    return model.eval()


def _check_quantized_scope(qweights: list[str | None], scope: str) -> None:
    """Refuse int4 layers outside the language model's decoder layers (a VLM's vision
    tower or projector, an LM head): we build those dense, so they would not load."""
    for name in qweights:
        if name is not None and not name.startswith(f"{scope}."):
            raise UnsupportedModelError(
                f"{name.removesuffix('.qweight')} is AWQ int4, but only the linear "
                f"layers under {scope} may be; keep the vision tower, projector and LM "
                "head in 16 bits"
            )


def build_model(
    config: PretrainedConfig,
    quant_config: AWQConfig | None,
    dtype: torch.dtype,
    device: torch.device,
) -> nn.Module:
    """The model with its weights allocated but not filled (rotary tables built)."""
    model_cls = model_class_for(config)
    with torch.device("meta"):
        model = model_cls(config)
        if quant_config is not None:
            convert_to_awq(model, quant_config)
    # Cast while still on meta (free), so memory is only ever allocated in the final dtype.
    model = model.to(dtype).to_empty(device=device)
    model.init_buffers(device)
    return model


def _fill_parameters(
    model: nn.Module,
    entries: list[TensorEntry],
    tensors: Iterable[tuple[str | None, torch.Tensor]] = (),
) -> None:
    """Copy the safetensors ``entries`` and the in-memory ``tensors`` (named as the
    model's checkpoint names them; None: a tensor it does not use) into ``model``;
    raise if any weight is left unfilled."""
    params = _checkpoint_tensors(model)
    modules = dict(model.named_modules())
    fused = model.fused_layers
    unfilled = _expected_checkpoint_names(params, fused)

    def target_for(name: str) -> torch.Tensor | None:
        module_name, _, param_name = name.rpartition(".")
        parent_name, _, layer_name = module_name.rpartition(".")
        if layer_name in fused:
            fused_name, index = fused[layer_name]
            target_name = f"{parent_name}.{fused_name}"
            if f"{target_name}.{param_name}" in params:
                unfilled.discard(name)
                return modules[target_name].shard(param_name, index)
        # Not fused here (e.g. a vision tower's q_proj): loads by its own name.
        if name in params:
            unfilled.discard(name)
            return params[name].data
        if not name.endswith("rotary_emb.inv_freq"):
            logger.warning("ignoring checkpoint tensor %s", name)
        return None

    load_into(entries, lambda entry: target_for(entry.name))
    for name, tensor in tensors:
        target = target_for(name) if name is not None else None
        if target is None:
            continue
        if target.shape != tensor.shape:
            raise ModelLoadError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
        target.copy_(tensor)
    missing = sorted(unfilled)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ModelLoadError(f"the checkpoint lacks {len(missing)} weights: {shown}")


def _renamed(
    entries: list[TensorEntry], checkpoint_name: Callable[[str], str | None]
) -> list[TensorEntry]:
    """Entries under the model's own names (checkpoint layouts vary between library
    versions); those it maps to None are tensors it does not use."""
    renamed = []
    for entry in entries:
        name = checkpoint_name(entry.name)
        if name is not None:
            renamed.append(dataclasses.replace(entry, name=name))
    return renamed


def _expected_checkpoint_names(
    params: dict[str, torch.Tensor], fused: dict[str, tuple[str, int]]
) -> set[str]:
    """The checkpoint tensors that fill ``params``: a fused parameter is one per member."""
    members: dict[str, list[str]] = {}
    for checkpoint_layer, (fused_layer, _) in fused.items():
        members.setdefault(fused_layer, []).append(checkpoint_layer)
    names = set()
    for name in params:
        module_name, _, param_name = name.rpartition(".")
        parent_name, _, layer_name = module_name.rpartition(".")
        for layer in members.get(layer_name, [layer_name]):
            names.add(f"{parent_name}.{layer}.{param_name}" if parent_name else name)
    return names


def _checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers (AWQ's packed weights), by checkpoint name."""
    # NOTE: named_parameters() lists a tied LM head once, as the embedding it shares.
    tensors = dict(model.named_parameters())
    persistent = model.state_dict(keep_vars=True).keys()
    tensors.update((name, b) for name, b in model.named_buffers() if name in persistent)
    return tensors
