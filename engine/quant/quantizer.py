"""``quantize``: a 16-bit checkpoint in, an AutoAWQ GEMM int4 checkpoint out.

One decoder layer at a time: the layer is read from the checkpoint, its calibration
inputs recorded (AWQ), its weights scaled and clipped (AWQ), rounded and packed, written
out, and dropped; the next layer's inputs are this layer's float outputs. Peak memory is
one layer plus the calibration activations. Every check on the user's input runs before
the first layer is read. Of a LLaVA or a Qwen-VL, only the language model is quantized
(calibrated on text alone); its vision tower and projector (merger) are copied in 16
bits, as AutoAWQ does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from engine.errors import QuantizationError
from engine.loader import load_config, resolve_model_dir
from engine.model_info import pick_device, pick_dtype
from engine.models.vila import VilaConfig
from engine.quant.awq import awq_layer
from engine.quant.calib import calibration_ids, pile_texts, read_texts
from engine.quant.config import SUPPORTED_GROUP_SIZES
from engine.quant.forward import BlockRunner, record_inputs
from engine.quant.layout import DecoderLayout, language_model_config, layout_for
from engine.quant.pack import quantize_rtn
from engine.quant.source import LayerwiseModel
from engine.quant.writer import CheckpointWriter
from engine.tokenizer import load_tokenizer
from engine.weights import load_into

logger = logging.getLogger(__name__)

METHODS = ("awq", "rtn")


@dataclass(frozen=True)
class QuantizeConfig:
    """``method`` "awq" (activation-aware search, then rounding) or "rtn" (rounding
    only, no calibration). ``num_samples`` windows of ``seq_len`` tokens calibrate AWQ."""

    method: str = "awq"
    group_size: int = 128
    num_samples: int = 128
    seq_len: int = 512
    clip: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizationError(f"method must be one of {', '.join(METHODS)}")
        if self.group_size < 1:
            raise QuantizationError(f"group size must be positive, got {self.group_size}")
        if self.num_samples < 1 or self.seq_len < 2:
            raise QuantizationError(
                "calibration needs at least 1 sample of at least 2 tokens, got "
                f"{self.num_samples} of {self.seq_len}"
            )


def quantize(
    model: str | Path,
    out_dir: str | Path,
    config: QuantizeConfig | None = None,
    calib_data: str | Path | None = None,
    calib_ids: torch.Tensor | None = None,
) -> Path:
    """Quantize ``model`` (a checkpoint directory or Hub ID) into ``out_dir``, which must
    not exist or be empty. AWQ calibrates on ``calib_ids`` [num_samples, seq_len] if
    given, else on the text at ``calib_data``, else on the Pile's validation split from
    the Hub. Returns ``out_dir``; raises an EngineError before any long work on bad input."""
    config = config or QuantizeConfig()
    model_dir = resolve_model_dir(str(model))
    hf_config = load_config(model_dir)
    _check_language_model(model_dir, hf_config)
    _check_not_quantized(model_dir, hf_config)
    layout = layout_for(hf_config)
    text_config = language_model_config(hf_config)
    device = pick_device(config.device)
    # NOTE: fp32 on a CPU even where bf16 is native (which "auto" would pick for serving):
    # the search compares small output errors, which bf16's 8-bit mantissa would blur.
    dtype = torch.float32 if device.type == "cpu" else pick_dtype("auto", hf_config, device)
    source = LayerwiseModel(model_dir, text_config, layout, dtype, device)
    if any(name.endswith(".qweight") for name in source.entries):
        raise QuantizationError(f"{model_dir} holds quantized weights already")
    _check_shapes(source, config.group_size)
    if config.method == "rtn" and (calib_data is not None or calib_ids is not None):
        logger.warning("RTN uses no calibration data; ignoring the data given")
    with CheckpointWriter(out_dir) as writer:
        ids = None
        if config.method == "awq":
            ids = _calibration(model_dir, config, calib_data) if calib_ids is None else calib_ids
            _check_calibration(ids, text_config)
        _copy_unquantized(source, writer)
        _quantize_layers(source, writer, config, ids)
        return writer.commit(_quantized_config(model_dir, config, layout), model_dir)


def _check_language_model(model_dir: Path, hf_config) -> None:
    """VILA keeps its language model in a folder of its own, which is quantized alone."""
    if isinstance(hf_config, VilaConfig):
        raise QuantizationError(
            f"{model_dir} is a VILA checkpoint; quantize its language model alone "
            f"(--model {model_dir / 'llm'} --out LLM_INT4), then copy {model_dir} and "
            "replace the copy's llm/ folder with LLM_INT4"
        )


def _check_not_quantized(model_dir: Path, hf_config) -> None:
    quant = getattr(hf_config, "quantization_config", None)
    if quant or (model_dir / "quant_config.json").exists():
        method = quant.get("quant_method", "AWQ") if isinstance(quant, dict) else "AWQ"
        raise QuantizationError(
            f"{model_dir} is already quantized ({method}); "
            "quantize the original 16-bit checkpoint instead"
        )


def _check_shapes(source: LayerwiseModel, group_size: int) -> None:
    for name in source.layout.linears:
        linear = source.layers[0].get_submodule(name)
        if linear.in_features % group_size:
            raise QuantizationError(
                f"group size {group_size} does not divide the {linear.in_features} "
                f"in-features of {name}; choose one that does (128, 64, 32 usually do)"
            )
        if linear.out_features % 8:
            raise QuantizationError(
                f"{name} has {linear.out_features} out-features; the GEMM format packs "
                "them 8 to an int32, so it needs a multiple of 8"
            )
    if group_size not in SUPPORTED_GROUP_SIZES:
        logger.warning(
            "edgechat serves AWQ group sizes %s; group size %d suits other tools only",
            SUPPORTED_GROUP_SIZES,
            group_size,
        )


def _calibration(model_dir: Path, config: QuantizeConfig, calib_data) -> torch.Tensor:
    tokenizer = load_tokenizer(model_dir)
    if calib_data is not None:
        texts, max_document_tokens = read_texts(Path(calib_data)), None
    else:
        texts, max_document_tokens = pile_texts(), config.seq_len
    return calibration_ids(
        tokenizer, texts, config.num_samples, config.seq_len, max_document_tokens
    )


def _check_calibration(ids: torch.Tensor, hf_config) -> None:
    if ids.dim() != 2 or ids.dtype != torch.int64 or ids.shape[1] < 2:
        raise QuantizationError("calibration ids must be int64 [num_samples, seq_len >= 2]")
    if ids.shape[1] > hf_config.max_position_embeddings:
        raise QuantizationError(
            f"calibration sequences of {ids.shape[1]} tokens exceed the model's context "
            f"of {hf_config.max_position_embeddings}; lower --seq-len"
        )
    if int(ids.min()) < 0 or int(ids.max()) >= hf_config.vocab_size:
        raise QuantizationError(f"calibration ids must be in [0, {hf_config.vocab_size})")


def _copy_unquantized(source: LayerwiseModel, writer: CheckpointWriter) -> None:
    """Embeddings, final norm, LM head (and a VLM's vision tower and projector): as they
    were, under the same names, in fp16 like everything else."""
    for entry in source.entries_outside_layers():
        tensor = torch.empty(entry.shape, dtype=entry.dtype)
        load_into([entry], lambda _, tensor=tensor: tensor)
        writer.add({entry.name: _as_fp16(tensor)})


@torch.no_grad()
def _quantize_layers(
    source: LayerwiseModel,
    writer: CheckpointWriter,
    config: QuantizeConfig,
    ids: torch.Tensor | None,
) -> None:
    layout = source.layout
    if ids is not None:
        x = source.embed(ids)  # [num_samples, seq_len, hidden]
        runner = BlockRunner(source.rotary(), ids.shape[1], source.dtype, source.device)
        logger.info("calibrating on %d samples of %d tokens", *ids.shape)
    # tqdm shows the time so far, the time left and the mean time per layer; the postfix,
    # the last layer's own time and the estimated total (layers cost alike).
    bar = tqdm(range(source.num_layers), desc=f"quantizing ({config.method})", unit="layer")
    first_start = time.perf_counter()
    for index in bar:
        start = time.perf_counter()
        name = source.layer_name(index)
        layer = source.materialize(name)
        if ids is not None:
            names = [group.input_of for group in layout.scale_groups]
            inputs, x = record_inputs(layer, runner, x, names)
            awq_layer(layer, layout, runner, inputs, config.group_size, config.clip)
            del inputs
        prefix = source.checkpoint_name(name)
        writer.add(_layer_tensors(layer, layout, prefix, config.group_size))
        source.release(layer)
        done = time.perf_counter()
        total = (done - first_start) / (index + 1) * source.num_layers
        bar.set_postfix_str(f"layer {index}: {done - start:.1f} s, total ~{total / 60:.1f} min")


def _layer_tensors(
    layer: nn.Module, layout: DecoderLayout, prefix: str, group_size: int
) -> dict[str, torch.Tensor]:
    """The layer's checkpoint tensors: AutoAWQ GEMM triples (and any bias) for the
    linears, everything else (the norms, with AWQ's scales folded in) in fp16."""
    tensors = {}
    for name in layout.linears:
        linear = layer.get_submodule(name)
        packed = quantize_rtn(linear.weight, group_size)
        tensors[f"{prefix}.{name}.qweight"] = packed.qweight
        tensors[f"{prefix}.{name}.qzeros"] = packed.qzeros
        tensors[f"{prefix}.{name}.scales"] = packed.scales
    for key, param in layer.named_parameters():
        module_name, _, param_name = key.rpartition(".")
        if module_name not in layout.linears or param_name != "weight":
            tensors[f"{prefix}.{key}"] = _as_fp16(param)
    return tensors


def _as_fp16(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float16) if tensor.is_floating_point() else tensor


def _quantized_config(model_dir: Path, config: QuantizeConfig, layout: DecoderLayout) -> dict:
    """The source's config.json plus AutoAWQ's ``quantization_config``."""
    data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    data["quantization_config"] = {
        "quant_method": "awq",
        "bits": 4,
        "group_size": config.group_size,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": list(layout.not_converted),
    }
    # Scales are fp16 and AWQ GEMM kernels compute in fp16; old readers use torch_dtype.
    data["dtype"] = data["torch_dtype"] = "float16"
    return data
