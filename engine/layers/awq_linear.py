"""Int4 AWQ linear layers: the AutoAWQ GEMM tensors as buffers, one kernel call per forward.

A fused AWQ layer (q/k/v, gate/up) concatenates its members along N, the output features:
``qweight`` and ``qzeros`` by packed columns (N/8), ``scales`` and ``bias`` by columns. Each
checkpoint layer therefore fills a column slice, where a dense MergedLinear fills rows.
"""

from __future__ import annotations

import torch
from torch import nn

import kernels
from engine.errors import UnsupportedModelError
from engine.layers.linear import MergedLinear
from engine.quant.config import AWQConfig

PACK = 8  # int4 values per int32


class AWQLinear(nn.Module):
    """``y = x @ W + b`` with W stored as AutoAWQ GEMM int4 (see engine/quant/pack.py)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int):
        super().__init__()
        if in_features % group_size or out_features % PACK:
            raise UnsupportedModelError(
                f"an AWQ layer of {in_features} x {out_features} features does not fit group "
                f"size {group_size} (in features) and packing by {PACK} (out features)"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        num_groups = in_features // group_size
        packed = out_features // PACK
        self.register_buffer("qweight", torch.empty(in_features, packed, dtype=torch.int32))
        self.register_buffer("qzeros", torch.empty(num_groups, packed, dtype=torch.int32))
        # NOTE: stored fp16 on disk; cast to the model's dtype with the rest of the model. In
        # bf16 that rounds each scale by <= 2^-9, far below the int4 step it scales.
        self.register_buffer("scales", torch.empty(num_groups, out_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.awq_linear(
            x, self.qweight, self.qzeros, self.scales, self.group_size, self.bias
        )

    def silu_and_mul_of(self, x: torch.Tensor) -> torch.Tensor:
        """``kernels.silu_and_mul(self(x))`` of a gate | up layer, in one launch on a GPU."""
        return kernels.awq_linear_silu_mul(
            x, self.qweight, self.qzeros, self.scales, self.group_size, self.bias
        )

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, group_size={self.group_size}"


class MergedAWQLinear(AWQLinear):
    """Several checkpoint AWQ layers side by side along N (``output_sizes`` in order)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool, group_size: int):
        if any(size % PACK for size in output_sizes):
            raise UnsupportedModelError(
                f"fused AWQ layer sizes {output_sizes} must be multiples of {PACK}"
            )
        super().__init__(in_features, sum(output_sizes), bias, group_size)
        self.output_sizes = output_sizes

    def shard(self, param_name: str, index: int) -> torch.Tensor:
        """The columns of ``param_name`` that checkpoint layer ``index`` fills."""
        start, size = sum(self.output_sizes[:index]), self.output_sizes[index]
        tensor = getattr(self, param_name).data
        if param_name in ("qweight", "qzeros"):
            return tensor.narrow(1, start // PACK, size // PACK)
        return tensor.narrow(tensor.dim() - 1, start, size)  # scales [K/G, N], bias [N]


def convert_to_awq(model: nn.Module, config: AWQConfig) -> None:
    """Swap the dense linear layers under ``model.quantized_scope`` for AWQ ones, except
    those the checkpoint left unquantized. Run on the meta device: it allocates nothing.

    A fused layer is quantized only as a whole: if modules_to_not_convert names some of
    its members but not all, the checkpoint cannot be served fused and is refused.
    """
    members: dict[str, list[str]] = {}
    for checkpoint_name, (fused_name, _) in model.fused_layers.items():
        members.setdefault(fused_name, []).append(checkpoint_name)
    scope = model.quantized_scope
    for name, module in list(model.get_submodule(scope).named_modules(prefix=scope)):
        if not isinstance(module, nn.Linear):
            continue
        parent_name, _, attr = name.rpartition(".")
        checkpoint_names = [f"{parent_name}.{m}" for m in members.get(attr, [attr])]
        quantized = [n for n in checkpoint_names if config.is_quantized(n)]
        if not quantized:
            continue
        if len(quantized) < len(checkpoint_names):
            raise UnsupportedModelError(
                f"{name} fuses {checkpoint_names}, but modules_to_not_convert leaves only "
                "some of them unquantized; fused layers must be all int4 or all dense"
            )
        setattr(model.get_submodule(parent_name), attr, _awq_like(module, config.group_size))


def _awq_like(linear: nn.Linear, group_size: int) -> AWQLinear:
    bias = linear.bias is not None
    if isinstance(linear, MergedLinear):
        return MergedAWQLinear(linear.in_features, linear.output_sizes, bias, group_size)
    return AWQLinear(linear.in_features, linear.out_features, bias, group_size)
