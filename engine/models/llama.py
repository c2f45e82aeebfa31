"""The Llama family (Llama 2/3/3.1/3.2, Vicuna, Mistral, Qwen2, Qwen3): one
implementation, since they differ only in config (GQA, RoPE scaling, q/k/v bias, tied
embeddings) and, for Qwen3, an RMSNorm over each head of q and k before the rotary."""

from __future__ import annotations

import torch
from torch import nn

import kernels
from engine.errors import UnsupportedModelError
from engine.layers.attention import AttentionMetadata, PagedAttention
from engine.layers.awq_linear import AWQLinear
from engine.layers.linear import MergedLinear
from engine.layers.norm import RMSNorm
from engine.layers.rotary import RotaryEmbedding, rope_parameters


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def num_kv_heads_of(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


class LlamaAttention(nn.Module):
    def __init__(self, config, rotary: RotaryEmbedding, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = num_kv_heads_of(config)
        self.head_dim = head_dim_of(config)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = MergedLinear(config.hidden_size, [q_size, kv_size, kv_size], qkv_bias)
        o_bias = bool(getattr(config, "attention_bias", False))
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=o_bias)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, rotary)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.qkv_proj.output_sizes, dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q.reshape(-1, self.head_dim)).view_as(q)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view_as(k)
        return self.o_proj(self.attn(positions, q, k, v, meta))


class LlamaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_act != "silu":
            raise UnsupportedModelError(f"activation {config.hidden_act!r} is not supported")
        bias = bool(getattr(config, "mlp_bias", False))
        size = config.intermediate_size
        self.gate_up_proj = MergedLinear(config.hidden_size, [size, size], bias)
        self.down_proj = nn.Linear(size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.gate_up_proj, AWQLinear):  # SiLU·mul in the same launch
            return self.down_proj(self.gate_up_proj.silu_and_mul_of(x))
        return self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, rotary: RotaryEmbedding, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, rotary, qkv_bias, qk_norm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)
        # On a CPU with the native kernels: the whole layer's decode step in one call
        # (engine/layers/cpu_decode_layer.py sets it; None where it cannot take the layer).
        self.native_decode = None

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's MLP output, the residual stream before it): the next
        layer (or the final norm) adds the two in the same pass as its RMSNorm."""
        if self.native_decode is not None:
            out = self.native_decode(positions, hidden, residual, meta)
            if out is not None:
                return out
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(positions, hidden, meta)
        hidden, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(
            head_dim_of(config), config.max_position_embeddings, rope_parameters(config)
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, self.rotary, qkv_bias, qk_norm)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        input_embeds: torch.Tensor | None = None,
        deepstack: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``input_embeds`` (``[num_tokens, hidden]``) replaces the embedding lookup: VLMs
        pass the token embeddings with image features written over the image tokens.
        ``deepstack`` (Qwen3-VL): rows ``[n]`` and features ``[num_layers, n, hidden]``,
        ``features[i]`` added to those rows' hidden states after layer ``i``."""
        hidden = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
        residual = None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(positions, hidden, residual, meta)
            if deepstack is not None and i < len(deepstack[1]):
                # The layer's output is hidden + residual: adding to either part adds to it.
                hidden = hidden.index_add(0, deepstack[0], deepstack[1][i].to(hidden.dtype))
        return self.norm.add_and_norm(hidden, residual)[0]


class LlamaForCausalLM(nn.Module):
    """``forward`` maps a flat batch of new tokens to final hidden states
    ``[num_tokens, hidden]``; ``compute_logits`` applies the LM head to the rows that
    sample, so prefill never pays for logits it throws away."""

    # Checkpoint layers fused into one of ours: name -> (our layer, index in its outputs).
    fused_layers = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    # AutoAWQ quantizes the linear layers of the decoder blocks only (never lm_head).
    quantized_scope = "model.layers"
    qkv_bias = False
    qk_norm = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        qkv_bias = self.qkv_bias or bool(getattr(config, "attention_bias", False))
        self.model = LlamaModel(config, qkv_bias, self.qk_norm)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def checkpoint_name(self, name: str) -> str | None:
        return name  # Hugging Face's names are ours

    def init_buffers(self, device: torch.device) -> None:
        """Called after ``to_empty()``: builds the rotary tables (not in checkpoints) and
        re-ties the LM head to the embedding (to_empty gives each module its own tensor)."""
        self.model.rotary.init_buffers(device)
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.layers]

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True  # Qwen2 has q/k/v biases but none on o_proj.


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True  # q/k/v biases only if attention_bias says so
