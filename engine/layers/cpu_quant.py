"""Weight-only quantized layers for the CPU (kernels/cpu_native.py's int8-activation
kernels, or torch's own int4 and int8 kernels: kernels/cpu_linear.py), and the pass that
puts them into a loaded model.

On a CPU, AWQ int4 layers (AutoAWQ GEMM, and TinyChat's, converted to it at load) are
repacked once into the kernel's int4 layout: no per-step dequantize. ``--quantization`` also
quantizes a dense checkpoint by round-to-nearest at load: the decoder's linears to int4
(group 128) or int8 (per channel), and in either case the LM head and the embedding to
int8 (a 150k-vocab head is a quarter of a small model's bytes; tied, one int8 copy
serves both).

The quantized linears compute in ``kernel_dtype``: by default with int8 activations in
the native kernels (kernels/cpu_native.py, built with the machine's C compiler at the
first load), else, where they do not build, in bf16 with torch's kernels (fast in bf16
only, see kernels/cpu_linear.py); a dtype asked for (``--dtype float32``: exact, the
reference's arithmetic) runs torch's kernels in that dtype.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from engine.demo import cache_dir
from engine.errors import ModelLoadError
from engine.layers.awq_linear import AWQLinear
from engine.quant.pack import rtn_codes, unpack_int4
from kernels import cpu_linear, cpu_native
from kernels.cpu_native import NativeKernels

logger = logging.getLogger(__name__)

RTN_GROUP_SIZE = 128
MIB = 1 << 20


class Int4Linear(nn.Module):
    """``y = x @ W.T + b`` with W int4 group-wise (buffers only), packed for the kernel
    that runs it: the native int8-activation kernels when ``native`` is given, else
    torch's int4 kernel (kernels/cpu_linear.py)."""

    def __init__(
        self,
        packed: dict[str, torch.Tensor],  # the buffers pack_int4(_native) returns, named
        in_features: int,
        group_size: int,
        bias: torch.Tensor | None,
        output_sizes: list[int],
        native: NativeKernels | None = None,
    ):
        super().__init__()
        for name, tensor in packed.items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", bias)
        self.native = native
        self.group_size = group_size
        self.in_features = in_features
        self.out_features = sum(output_sizes)
        self.output_sizes = output_sizes  # a fused layer's members, as MergedLinear's

    @classmethod
    def from_awq(cls, layer: AWQLinear, dtype: torch.dtype) -> Int4Linear:
        codes = unpack_int4(layer.qweight).t()  # [N, K]
        zeros = unpack_int4(layer.qzeros)  # [K/G, N]
        return cls._packed(codes, zeros, layer.scales, layer.group_size, dtype, layer)

    @classmethod
    def from_dense(cls, linear: nn.Linear, group_size: int, dtype: torch.dtype) -> Int4Linear:
        q, zeros, scales = rtn_codes(linear.weight.detach(), group_size)  # [N, K/G, G|1]
        codes = q.reshape(linear.weight.shape)
        return cls._packed(codes, zeros[..., 0].t(), scales[..., 0].t(), group_size, dtype, linear)

    @classmethod
    def _packed(
        cls,
        codes: torch.Tensor,  # [N, K]
        zeros: torch.Tensor,  # [K/G, N]
        scales: torch.Tensor,  # [K/G, N]
        group_size: int,
        dtype: torch.dtype,  # to compute in; INT8_ACTIVATIONS: the native kernels
        layer: nn.Module,  # what is being replaced
    ) -> Int4Linear:
        if dtype == cpu_linear.INT8_ACTIVATIONS:
            names = ("weight", "scales", "offsets")
            packed = cpu_linear.pack_int4_native(codes, zeros, scales, group_size)
            native = native_kernels()
            if native is None:
                raise ValueError(
                    "int8 activations need the native CPU kernels, which did not build"
                )
        else:
            names = ("packed_weight", "scales_and_zeros")
            packed = cpu_linear.pack_int4(codes, zeros, scales, group_size, dtype)
            native = None
        buffers = dict(zip(names, packed))
        args = (codes.shape[1], group_size, _bias_of(layer), _output_sizes(layer), native)
        return cls(buffers, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native is not None:
            return cpu_linear.native_int4_linear(
                self.native,
                x,
                self.weight,
                self.scales,
                self.offsets,
                self.group_size,
                self.out_features,
                self.bias,
            )
        return cpu_linear.int4_linear(
            x, self.packed_weight, self.scales_and_zeros, self.group_size, self.bias
        )

    def extra_repr(self) -> str:
        kernel = "native int8 activations" if self.native else "torch"
        return f"{self.in_features}, {self.out_features}, group_size={self.group_size}, {kernel}"


class Int8Linear(nn.Module):
    """``y = x @ W.T + b`` with W int8 per output channel (buffers only); the native
    int8-activation kernel runs it when ``native`` is given (fp32 scales, in-features a
    multiple of 32), else torch's int8 kernel in the scales' dtype."""

    def __init__(
        self,
        weight: torch.Tensor,  # [N, K] int8
        scales: torch.Tensor,  # [N] in the dtype to compute in
        bias: torch.Tensor | None,
        output_sizes: list[int],
        native: NativeKernels | None = None,
    ):
        super().__init__()
        cpu_linear.check_int8_shape(weight.shape[1])
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self.output_sizes = output_sizes
        self.native = native

    @classmethod
    def from_dense(cls, linear: nn.Linear, dtype: torch.dtype) -> Int8Linear:
        weight, scales = cpu_linear.quantize_int8(linear.weight.detach(), dtype)
        native = int8_native_kernels(dtype, weight.shape[1])
        return cls(weight, scales, _bias_of(linear), _output_sizes(linear), native)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native is not None:
            return cpu_linear.native_int8_linear(
                self.native, x, self.weight, self.scales, self.bias
            )
        return cpu_linear.int8_linear(x, self.weight, self.scales, self.bias)

    def extra_repr(self) -> str:
        kernel = "native int8 activations" if self.native else "torch"
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, {kernel}"


class Int8Embedding(nn.Module):
    """An int8 embedding table (per-row scales); a lookup dequantizes the rows it reads.
    ``tiled``: the table is in the native kernel's tiles (kernels/cpu_linear.py's
    ``int8_tiled``), as a tied LM head running in that kernel reads it."""

    def __init__(
        self, weight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, tiled: bool = False
    ):
        super().__init__()
        self.register_buffer("weight", weight)  # [V, H] int8
        self.register_buffer("scales", scales)  # [V]
        self.dtype = dtype  # the model's, which the rows are given in
        self.tiled = tiled

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return cpu_linear.int8_rows(ids, self.weight, self.scales, self.dtype, self.tiled)


def _bias_of(linear: nn.Module) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


def _output_sizes(linear: nn.Module) -> list[int]:
    return list(getattr(linear, "output_sizes", [linear.out_features]))


def check_quantization(quantization: str, is_awq: bool, device: torch.device) -> None:
    """Refuse, before anything loads, a quantization the engine cannot apply."""
    if quantization == "none":
        return
    if device.type != "cpu":
        raise ModelLoadError(
            f"--quantization {quantization} runs on CPU only for now; on a GPU serve an AWQ "
            "int4 checkpoint (`edgechat quantize` writes one)"
        )
    if is_awq and quantization == "int8":
        raise ModelLoadError(
            "--quantization int8 quantizes dense checkpoints, but this one is AWQ int4 "
            "already; use none, or int4 for an int8 LM head and embedding as well"
        )


def kernel_dtype(requested: str, model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """What the quantized linears compute in for ``--dtype requested`` on ``device``: on a
    CPU for ``auto``, int8 activations in the native kernels where they build, else bf16
    (torch's kernels are fast in bf16 only, native bf16 or not); otherwise the model's
    dtype (float32: exact, the reference's arithmetic)."""
    if requested != "auto":
        return model_dtype
    if device.type == "cpu" and native_kernels() is not None:
        return cpu_linear.INT8_ACTIVATIONS
    return torch.bfloat16


@functools.cache
def native_kernels() -> NativeKernels | None:
    """The native CPU kernels, built (once per machine) into the cache directory, or None
    with a warning where they cannot be."""
    try:
        kernels = cpu_native.load(cache_dir() / "kernels")
    except cpu_native.NativeBuildError as e:
        logger.warning(
            "the native CPU kernels are unavailable, so torch's bf16 kernels run the "
            "quantized layers (2-3x slower): %s",
            e,
        )
        return None
    logger.info("native CPU kernels (%s): %s", kernels.simd, kernels.path)
    return kernels


def int8_native_kernels(dtype: torch.dtype, in_features: int) -> NativeKernels | None:
    """The native kernels for an int8 layer computing in ``dtype``, where they can run it."""
    if dtype != cpu_linear.INT8_ACTIVATIONS or in_features % cpu_linear.ACTIVATION_BLOCK:
        return None
    return native_kernels()


def prepare_cpu_weights(model: nn.Module, quantization: str, dtype: torch.dtype) -> None:
    """Swap a loaded CPU model's AWQ layers, and with ``quantization`` ("int4"/"int8")
    its dense decoder linears, LM head and embedding, for the quantized layers above,
    computing in ``dtype``, one layer at a time (so memory peaks at the model plus one
    layer); logs what was done and the weights' bytes before and after."""
    bytes_before = weight_bytes(model)
    num_repacked = _repack_awq_layers(model, dtype)
    done = []
    if num_repacked:
        done.append(f"{num_repacked} AWQ int4 layers repacked for the CPU int4 kernel")
    if quantization != "none":
        num_quantized = _quantize_dense_linears(model, quantization, dtype)
        what = f"int4 (group {RTN_GROUP_SIZE})" if quantization == "int4" else "int8"
        done.append(f"{num_quantized} dense decoder linears quantized to {what} by RTN")
        done.append(f"LM head and embedding int8 ({_quantize_head_and_embedding(model, dtype)})")
    if not done:
        return
    note = "; `edgechat quantize` (AWQ) is more accurate" if quantization != "none" else ""
    logger.info(
        "CPU weights: %s; their matmuls in %s: weights %.1f MiB -> %.1f MiB%s",
        "; ".join(done),
        str(dtype).removeprefix("torch."),
        bytes_before / MIB,
        weight_bytes(model) / MIB,
        note,
    )


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and persistent buffers (a tied tensor once)."""
    seen: dict[int, int] = {}
    for tensor in model.state_dict(keep_vars=True).values():
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def _repack_awq_layers(model: nn.Module, dtype: torch.dtype) -> int:
    num_repacked = 0
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, AWQLinear):
            continue
        try:
            repacked = Int4Linear.from_awq(layer, dtype)
        except ValueError as e:  # e.g. AWQ packs N by 8, torch by 16: still runs, slowly
            logger.warning("%s stays on the dequantizing AWQ path on CPU: %s", name, e)
            continue
        _replace(model, name, repacked)
        num_repacked += 1
    return num_repacked


def _quantize_dense_linears(model: nn.Module, quantization: str, dtype: torch.dtype) -> int:
    scope = model.quantized_scope
    num_quantized = 0
    for name, layer in list(model.get_submodule(scope).named_modules(prefix=scope)):
        if not isinstance(layer, nn.Linear):
            continue
        try:
            if quantization == "int4":
                quantized = Int4Linear.from_dense(layer, RTN_GROUP_SIZE, dtype)
            else:
                quantized = Int8Linear.from_dense(layer, dtype)
        except ValueError as e:
            raise ModelLoadError(f"--quantization {quantization} cannot take {name}: {e}") from None
        _replace(model, name, quantized)
        num_quantized += 1
    return num_quantized


def _quantize_head_and_embedding(model: nn.Module, dtype: torch.dtype) -> str:
    """Int8 LM head and embedding; a tied pair shares one int8 table. Says which."""
    text = model.quantized_scope.removesuffix("model.layers")  # "" or "language_model."
    head_name, embed_name = f"{text}lm_head", f"{text}model.embed_tokens"
    head, embed = model.get_submodule(head_name), model.get_submodule(embed_name)
    try:
        cpu_linear.check_int8_shape(head.in_features)
    except ValueError as e:
        raise ModelLoadError(f"int8 cannot take {head_name}: {e}") from None
    weight, scales = cpu_linear.quantize_int8(embed.weight.detach(), dtype)
    tied = head.weight is embed.weight
    tiled = cpu_linear.int8_tiled(dtype, weight.shape[1])
    _replace(model, embed_name, Int8Embedding(weight, scales, embed.weight.dtype, tiled))
    if tied:
        native = int8_native_kernels(dtype, head.in_features)
        _replace(model, head_name, Int8Linear(weight, scales, None, [head.out_features], native))
        return "tied: one int8 table"
    _replace(model, head_name, Int8Linear.from_dense(head, dtype))
    return "untied"


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)
