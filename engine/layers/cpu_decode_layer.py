"""A CPU decode step of a Llama-family decoder layer in one native call
(kernels/cpu_decode_layer.c), for layers whose linears all run in the native
int8-activation kernels.

At decode, a 0.5B model's layer is ~12 module calls and 9 library calls, each a few
microseconds of Python around a few of arithmetic: 4 ms of a 19 ms step on two threads
(Qwen2-0.5B shapes, int4). The native layer runs the same C ops in the same order, so
its outputs and KV cache writes are the module path's to the bit
(tests/engine/test_cpu_decode_layer.py). Steps it cannot take (a prefill, another
dtype, an odd layout) run the modules, as do layers it cannot describe (Qwen3's q/k
norms, a linear on torch's kernels or the dequantizing AWQ path).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.layers.attention import AttentionMetadata, PagedAttention
from engine.layers.cpu_quant import Int4Linear, Int8Linear
from kernels import cpu_linear
from kernels.cpu_native import DecoderLayerLayout, LinearLayout, NativeKernels
from kernels.cpu_ops import contiguous_int64, rows_in_fp32

logger = logging.getLogger(__name__)


class NativeDecodeLayer:
    """``__call__`` is LlamaDecoderLayer.forward for the steps it takes, else None."""

    def __init__(self, native: NativeKernels, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.native = native
        self.attention: PagedAttention = attn.attn  # its KV cache is bound after the load
        self.layer = layer  # owns every buffer the layout points into
        self.layout = DecoderLayerLayout(
            hidden=layer.input_layernorm.weight.shape[0],
            heads=attn.num_heads,
            kv_heads=attn.num_kv_heads,
            head_dim=attn.head_dim,
            intermediate=mlp.gate_up_proj.output_sizes[0],
            eps=layer.input_layernorm.eps,
            scale=attn.attn.scale,
            input_norm=layer.input_layernorm.weight.data_ptr(),
            post_attention_norm=layer.post_attention_layernorm.weight.data_ptr(),
            qkv=_linear_layout(attn.qkv_proj),
            o=_linear_layout(attn.o_proj),
            gate_up=_linear_layout(mlp.gate_up_proj),
            down=_linear_layout(mlp.down_proj),
        )

    @staticmethod
    def describable(layer: nn.Module) -> bool:
        """Whether a LlamaDecoderLayer is one the native layer can run."""
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        return (
            attn.q_norm is None
            and all(_native_linear(linear) for linear in linears)
            and all(rows_in_fp32(norm.weight) for norm in norms)
            and norms[0].eps == norms[1].eps
        )

    def __call__(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        attention = self.attention
        takes = (
            hidden.dim() == 2
            and hidden.shape[0] == meta.seq_lens.shape[0]  # one new token a sequence
            and rows_in_fp32(hidden, attention.k_cache, attention.v_cache)
            and (residual is None or (rows_in_fp32(residual) and residual.shape == hidden.shape))
            and contiguous_int64(meta.slot_mapping)
            and meta.seq_lens.dtype == meta.block_tables.dtype == torch.int32
            and meta.seq_lens.is_contiguous()
            and meta.block_tables.stride(-1) == 1
        )
        if not takes:
            return None
        rows, cos, sin = attention.rotary.tables(positions)
        if not (contiguous_int64(rows) and rows_in_fp32(cos, sin)):
            return None
        return self.native.decoder_layer(
            self.layout,
            hidden,
            residual,
            rows,
            cos,
            sin,
            attention.k_cache,
            attention.v_cache,
            meta.slot_mapping,
            meta.block_tables,
            meta.seq_lens,
        )


def use_native_decode_layers(model: nn.Module, native: NativeKernels | None) -> int:
    """Gives each Llama-family decoder layer of ``model`` that the native layer can run
    its NativeDecodeLayer (None: takes them back); how many it gave."""
    from engine.models.llama import LlamaDecoderLayer  # the models import engine.layers

    count = 0
    for module in model.modules():
        if isinstance(module, LlamaDecoderLayer):
            fits = native is not None and NativeDecodeLayer.describable(module)
            module.native_decode = NativeDecodeLayer(native, module) if fits else None
            count += fits
    if count:
        logger.info("%d decoder layers decode in one native call each", count)
    return count


def _native_linear(linear: nn.Module) -> bool:
    if not isinstance(linear, (Int4Linear, Int8Linear)) or linear.native is None:
        return False
    return linear.bias is None or rows_in_fp32(linear.bias)


def _linear_layout(linear: Int4Linear | Int8Linear) -> LinearLayout:
    bias = None if linear.bias is None else linear.bias.data_ptr()
    if isinstance(linear, Int4Linear):
        return LinearLayout(
            bits=4,
            out_features=linear.out_features,
            in_features=linear.in_features,
            group_size=linear.group_size,
            activation_block=cpu_linear.activation_block(linear.group_size),
            weight=linear.weight.data_ptr(),
            scales=linear.scales.data_ptr(),
            offsets=linear.offsets.data_ptr(),
            bias=bias,
        )
    out_features, in_features = linear.weight.shape
    return LinearLayout(
        bits=8,
        out_features=out_features,
        in_features=in_features,
        activation_block=cpu_linear.activation_block(in_features),
        weight=linear.weight.data_ptr(),
        scales=linear.scales.data_ptr(),
        bias=bias,
    )
