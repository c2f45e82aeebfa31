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
import os
from collections.abc import Callable
from dataclasses import dataclass

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
# Rows of an int8 table (embedding, LM head) read and quantized at a time, as fp32 bytes:
# the quantizer's temporaries are a few of them, at the end of the load, when all else is
# in memory (8 MiB chunks put 40-100 MiB on a Qwen2-0.5B int4 load's peak, 2 MiB 10-20).
INT8_TABLE_CHUNK_BYTES = 2 << 20
MIB = 1 << 20
NATIVE_KERNELS_ENV = "EDGECHAT_NATIVE_CPU_KERNELS"


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


def kernel_dtype(requested: str, device: torch.device) -> torch.dtype | None:
    """What the quantized linears compute in for ``--dtype requested`` on ``device``: on a
    CPU for ``auto``, int8 activations in the native kernels where they build, else bf16
    (torch's kernels are fast in bf16 only, native bf16 or not); otherwise None, the
    model's dtype (float32: exact, the reference's arithmetic)."""
    if requested != "auto":
        return None
    if device.type == "cpu" and native_kernels() is not None:
        return cpu_linear.INT8_ACTIVATIONS
    return torch.bfloat16


def native_kernels() -> NativeKernels | None:
    """The native CPU kernels, built (once per machine) into the cache directory, or None
    with a warning where they cannot be; None, too, where ``$EDGECHAT_NATIVE_CPU_KERNELS``
    is 0 (to compare with torch's kernels, or to step around a compiler that fails)."""
    if os.environ.get(NATIVE_KERNELS_ENV, "1").strip() == "0":
        logger.info("%s=0: torch's kernels run the quantized CPU layers", NATIVE_KERNELS_ENV)
        return None
    return _built_native_kernels()


@functools.cache
def _built_native_kernels() -> NativeKernels | None:
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
    if dtype != cpu_linear.INT8_ACTIVATIONS or in_features % cpu_linear.NATIVE_BLOCK:
        return None
    return native_kernels()


@dataclass(frozen=True)
class CpuWeightPlan:
    """The modules of a meta-built CPU model that the load replaces by quantized ones,
    each as soon as its own weights are read, so that no dense copy of the model is ever
    whole: ``linears`` maps a module's name to what it becomes ("awq": repacked, "int4" /
    "int8": RTN); ``embedding`` and (untied) ``head`` are read a few rows at a time into
    one int8 table each (None: left dense)."""

    quantization: str
    dtype: torch.dtype  # what the quantized matmuls compute in
    linears: dict[str, str]
    embedding: str | None
    head: str | None
    tied: bool

    @property
    def deferred(self) -> list[str]:
        """The modules the loader must not allocate: they never exist dense, whole."""
        tables = [name for name in (self.embedding, self.head) if name is not None]
        return [*self.linears, *tables]

    @property
    def int8_tables(self) -> list[str]:
        """The modules whose ``weight`` is an int8 table (a tied head reads the embedding's)."""
        if self.embedding is None:
            return []
        return [self.embedding] if self.tied else [self.embedding, self.head]


def plan_cpu_weights(model: nn.Module, quantization: str, dtype: torch.dtype) -> CpuWeightPlan:
    """What a CPU load of ``model`` (built on meta) quantizes: its AWQ layers that torch's
    int4 kernel can take (the others stay on the dequantizing AWQ path, with a warning),
    and with ``quantization`` ("int4"/"int8") its dense decoder linears, LM head and
    embedding, computing in ``dtype``."""
    linears = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, AWQLinear):
            continue
        try:
            cpu_linear.check_int4_kernel_shape(
                layer.in_features, layer.out_features, layer.group_size, dtype
            )
        except ValueError as e:  # e.g. AWQ packs N by 8, torch by 16: still runs, slowly
            logger.warning("%s stays on the dequantizing AWQ path on CPU: %s", name, e)
            continue
        linears[name] = "awq"
    if quantization == "none":
        return CpuWeightPlan(quantization, dtype, linears, None, None, False)
    scope = model.quantized_scope
    for name, layer in model.get_submodule(scope).named_modules(prefix=scope):
        if isinstance(layer, nn.Linear):
            linears[name] = quantization
    text = scope.removesuffix("model.layers")  # "" or "language_model."
    head_name, embed_name = f"{text}lm_head", f"{text}model.embed_tokens"
    head, embed = model.get_submodule(head_name), model.get_submodule(embed_name)
    assert head.bias is None, "an int8 table holds no bias"
    try:
        cpu_linear.check_int8_shape(head.in_features)
    except ValueError as e:
        raise ModelLoadError(f"int8 cannot take {head_name}: {e}") from None
    return CpuWeightPlan(
        quantization, dtype, linears, embed_name, head_name, head.weight is embed.weight
    )


def quantized_linear(plan: CpuWeightPlan, name: str, layer: nn.Module) -> nn.Module:
    """``layer`` (filled) as ``plan`` quantizes it."""
    kind = plan.linears[name]
    if kind == "awq":
        return Int4Linear.from_awq(layer, plan.dtype)
    try:
        if kind == "int4":
            return Int4Linear.from_dense(layer, RTN_GROUP_SIZE, plan.dtype)
        return Int8Linear.from_dense(layer, plan.dtype)
    except ValueError as e:
        raise ModelLoadError(f"--quantization {kind} cannot take {name}: {e}") from None


def int8_table(
    read_rows: Callable[[int, int], torch.Tensor],  # (start, stop) -> rows in the model's dtype
    shape: tuple[int, int],  # [V, H]
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:  # as quantize_int8(the whole table, dtype)
    """The int8 codes and per-row scales of a table read ``INT8_TABLE_CHUNK_BYTES`` of
    fp32 rows at a time (quantize_int8 is row by row, so chunks change no value)."""
    num_rows, row_size = shape
    # whole tiles of the native int8 layout, so that each chunk tiles alone
    tile = cpu_linear.NATIVE_ROWS
    rows_per_chunk = max(1, INT8_TABLE_CHUNK_BYTES // (4 * row_size * tile)) * tile
    codes = torch.empty(shape, dtype=torch.int8)
    scales = None
    for start in range(0, num_rows, rows_per_chunk):
        stop = min(start + rows_per_chunk, num_rows)
        chunk_codes, chunk_scales = cpu_linear.quantize_int8(read_rows(start, stop), dtype)
        if scales is None:
            scales = torch.empty(num_rows, dtype=chunk_scales.dtype)
        codes[start:stop] = chunk_codes
        scales[start:stop] = chunk_scales
    return codes, scales


def int8_table_layers(
    plan: CpuWeightPlan,
    name: str,
    table: tuple[torch.Tensor, torch.Tensor],
    model_dtype: torch.dtype,  # the embedding's rows are given in it
) -> dict[str, nn.Module]:
    """The quantized modules one int8 table (of module ``name``) becomes, by name: the
    embedding (and the LM head tied to it), or the untied LM head."""
    weight, scales = table
    native = int8_native_kernels(plan.dtype, weight.shape[1])
    head = Int8Linear(weight, scales, None, [weight.shape[0]], native)
    if name == plan.head:
        return {name: head}
    tiled = cpu_linear.int8_tiled(plan.dtype, weight.shape[1])
    layers = {name: Int8Embedding(weight, scales, model_dtype, tiled)}
    if plan.tied:
        layers[plan.head] = head
    return layers


def log_cpu_weights(plan: CpuWeightPlan, bytes_before: int, bytes_after: int) -> None:
    """Says what ``plan`` did, and the weights' bytes before and after."""
    kinds = list(plan.linears.values())
    done = []
    if "awq" in kinds:
        done.append(f"{kinds.count('awq')} AWQ int4 layers repacked for the CPU int4 kernel")
    if plan.quantization != "none":
        what = f"int4 (group {RTN_GROUP_SIZE})" if plan.quantization == "int4" else "int8"
        num_quantized = kinds.count(plan.quantization)
        done.append(f"{num_quantized} dense decoder linears quantized to {what} by RTN")
        pairing = "tied: one int8 table" if plan.tied else "untied"
        done.append(f"LM head and embedding int8 ({pairing})")
    if not done:
        return
    note = "; `edgechat quantize` (AWQ) is more accurate" if plan.quantization != "none" else ""
    logger.info(
        "CPU weights: %s; their matmuls in %s: weights %.1f MiB -> %.1f MiB%s",
        "; ".join(done),
        str(plan.dtype).removeprefix("torch."),
        bytes_before / MIB,
        bytes_after / MIB,
        note,
    )


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and persistent buffers (a tied tensor once; on
    the meta device too, where every tensor's address is 0)."""
    seen: dict[int, int] = {}
    for tensor in model.state_dict(keep_vars=True).values():
        seen[tensor.data_ptr() or id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())
