"""From a model name to a loaded model: Hub resolution, HF config, and weights copied
tensor by tensor into a model built on the meta device (never two copies in memory)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from engine.errors import ModelLoadError, UnsupportedModelError
from engine.fill import fill_parameters
from engine.layers.awq_linear import convert_to_awq
from engine.layers.cpu_quant import (
    check_quantization,
    log_cpu_weights,
    plan_cpu_weights,
    weight_bytes,
)
from engine.models.registry import model_class_for
from engine.models.vila import VilaConfig
from engine.quant.config import AWQConfig, read_quant_config
from engine.quant.tinychat import FILE_PATTERN, find_tinychat_checkpoint, open_tinychat_checkpoint
from engine.weights import TensorEntry, checkpoint_entries, is_split_checkpoint

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
    are repacked for torch's kernels and ``quantization`` is applied, their matmuls in
    ``kernel_dtype`` (default: ``dtype``; engine/layers/cpu_quant.py), each layer as soon
    as it is read: loading peaks near the quantized model's size, not the dense one's."""
    split = is_split_checkpoint(model_dir)
    tinychat_path = find_tinychat_checkpoint(model_dir)
    converted: Iterable[tuple[str | None, torch.Tensor]] = ()
    converted_qweights: list[str | None] = []
    if tinychat_path is None:
        quant_config = read_quant_config(_language_model_dir(model_dir))
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
    model = _meta_model(config, quant_config, dtype)
    plan = None
    if device.type == "cpu":
        plan = plan_cpu_weights(model, quantization, kernel_dtype or dtype)
    bytes_before = weight_bytes(model)
    _allocate(model, device, plan.deferred if plan is not None else ())
    rename = model.checkpoint_name
    entries = _renamed(entries, rename)
    converted = ((rename(name), t) for name, t in converted)
    converted_qweights = [rename(name) for name in converted_qweights]
    qweights = [e.name for e in entries if e.name.endswith(".qweight")] + converted_qweights
    _check_quantized_scope(qweights, model.quantized_scope)
    fill_parameters(model, entries, converted, plan)
    if plan is not None:
        log_cpu_weights(plan, bytes_before, weight_bytes(model))
    return model.eval()


def is_int4_checkpoint(model_dir: Path) -> bool:
    """Whether the checkpoint's language model is AWQ int4 (AutoAWQ or TinyChat), as
    ``load_model`` will find it."""
    return (
        find_tinychat_checkpoint(model_dir) is not None
        or read_quant_config(_language_model_dir(model_dir)) is not None
    )


def _language_model_dir(model_dir: Path) -> Path:
    # VILA keeps its language model, the only part AutoAWQ quantizes, in llm/.
    return model_dir / "llm" if is_split_checkpoint(model_dir) else model_dir


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
    model = _meta_model(config, quant_config, dtype)
    _allocate(model, device)
    return model


def _meta_model(
    config: PretrainedConfig, quant_config: AWQConfig | None, dtype: torch.dtype
) -> nn.Module:
    model_cls = model_class_for(config)
    with torch.device("meta"):
        model = model_cls(config)
        if quant_config is not None:
            convert_to_awq(model, quant_config)
    # Cast while still on meta (free), so memory is only ever allocated in the final dtype.
    return model.to(dtype)


def _allocate(model: nn.Module, device: torch.device, keep_on_meta: Collection[str] = ()) -> None:
    """Allocate the tensors of ``model`` on ``device``, but those of the modules named in
    ``keep_on_meta`` (the fill builds each of those alone), and build the rotary tables."""
    kept = set(keep_on_meta)
    for name, module in model.named_modules():
        if name not in kept:
            module.to_empty(device=device, recurse=False)
    model.init_buffers(device)


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
