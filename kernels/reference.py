"""Torch reference twins of the kernels: the CPU path, and the oracle the Triton kernels
are tested against. Plain, readable tensor code; correctness over speed (but no extra
work on the CPU hot path: the dense model runs through these every step).

KV pool layout (per layer, for K and for V): ``[num_blocks, block_size, num_kv_heads,
head_dim]``. Token position ``p`` of a sequence lives in block ``block_table[p //
block_size]`` at row ``p % block_size``; its flat "slot" is ``block * block_size + row``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; negative slots are skipped
) -> None:
    """Store each new token's K and V at its slot (none for a negative slot: a padding
    row, as the kernel warm-up and CUDA graphs pass them)."""
    num_kv_heads, head_dim = k_cache.shape[2:]
    if slot_mapping.numel() and slot_mapping.min() < 0:
        keep = slot_mapping >= 0
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


# A query chunk's scores in fp32 stay under this many elements (64 MiB), however long the
# context: a 2k-token prefill over 32k of context would otherwise take gigabytes a layer.
MAX_SCORES_PER_CHUNK = 1 << 24


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32, >= ceil(max(seq_lens) / bs) cols
    seq_lens: torch.Tensor,  # [num_seqs] int32: context length including the new tokens
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32: sequence i's queries start here
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal attention of each sequence's new tokens over its whole paged context.

    Sequence ``i`` has ``q_i = query_start_loc[i+1] - query_start_loc[i]`` new tokens at
    positions ``seq_lens[i] - q_i .. seq_lens[i] - 1`` (whose K/V are already written);
    decode is ``q_i = 1``, a prefill ``q_i = seq_lens[i]``, a chunked or prefix-cached
    prefill anything between. Grouped-query heads share their KV head.

    One sequence at a time: its blocks are gathered whole (a copy of its own context,
    nothing padded to the batch's longest) and attended with two matmuls and an fp32
    softmax, so the work is proportional to each sequence's context.
    """
    out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        start, end = starts[i], starts[i + 1]
        blocks = block_tables[i, : -(-seq_len // k_cache.shape[1])]
        keys = _gather_context(k_cache, blocks, seq_len)
        values = _gather_context(v_cache, blocks, seq_len)
        out[start:end] = _attend(query[start:end], keys, values, scale)
    return out


def _gather_context(
    cache: torch.Tensor, blocks: torch.Tensor, seq_len: int
) -> torch.Tensor:  # [seq_len, num_kv_heads, head_dim] fp32
    num_kv_heads, head_dim = cache.shape[2:]
    rows = cache.index_select(0, blocks).view(-1, num_kv_heads, head_dim)
    return rows[:seq_len].float()


def _attend(
    query: torch.Tensor,  # [num_queries, num_heads, head_dim]: the context's last positions
    keys: torch.Tensor,  # [seq_len, num_kv_heads, head_dim] fp32
    values: torch.Tensor,
    scale: float,
) -> torch.Tensor:  # [num_queries, num_heads, head_dim] fp32
    num_queries, num_heads, head_dim = query.shape
    seq_len, num_kv_heads = keys.shape[:2]
    group = num_heads // num_kv_heads
    # NOTE: strided views, no copies: each KV head's [seq_len, head_dim] rows are a matrix
    # with leading dimension num_kv_heads * head_dim, which the batched matmul reads as is.
    keys_t = keys.permute(1, 2, 0)  # [kv, head_dim, seq_len]
    values = values.transpose(0, 1)  # [kv, seq_len, head_dim]
    key_pos = torch.arange(seq_len, device=query.device)
    chunk = max(1, MAX_SCORES_PER_CHUNK // (num_heads * seq_len))
    out = []
    for first in range(0, num_queries, chunk):
        q = query[first : first + chunk].float() * scale  # fewer products than the scores
        rows = q.shape[0]
        # [kv, rows * group, head_dim]: a KV head's query heads, row after row
        q = q.view(rows, num_kv_heads, group, head_dim).transpose(0, 1)
        scores = torch.matmul(q.reshape(num_kv_heads, rows * group, head_dim), keys_t)
        scores = scores.view(num_kv_heads, rows, group, seq_len)
        first_pos = seq_len - num_queries + first
        if first_pos < seq_len - 1:  # some query precedes a key: mask its future
            future = key_pos > (first_pos + torch.arange(rows, device=query.device))[:, None]
            scores.masked_fill_(future[None, :, None], float("-inf"))
        probs = scores.softmax(-1).view(num_kv_heads, rows * group, seq_len)
        heads = torch.matmul(probs, values).view(num_kv_heads, rows, group, head_dim)
        out.append(heads.transpose(0, 1).reshape(rows, num_heads, head_dim))
    return torch.cat(out)


# Column j of each group of eight sits in nibble AWQ_NIBBLE_OF_COLUMN[j] (AutoAWQ's order).
# NOTE: engine/quant/pack.py owns the format; kernels/ may not import engine/, so this
# twin repeats the unpacking and tests hold the two against each other.
AWQ_NIBBLE_OF_COLUMN = (0, 4, 1, 5, 2, 6, 3, 7)


def awq_linear(
    x: torch.Tensor,  # [..., K]
    qweight: torch.Tensor,  # [K, N/8] int32, AutoAWQ GEMM layout
    qzeros: torch.Tensor,  # [K/G, N/8] int32
    scales: torch.Tensor,  # [K/G, N]
    group_size: int,
    bias: torch.Tensor | None = None,  # [N]
) -> torch.Tensor:  # [..., N] in x's dtype
    """``x @ W + bias`` with the int4 weight ``W[k, n] = (q - z) * s`` dequantized whole
    (in fp32) on every call."""
    shifts = torch.tensor(AWQ_NIBBLE_OF_COLUMN, device=x.device, dtype=torch.int32) * 4
    q = (qweight[..., None] >> shifts) & 0xF  # [K, N/8, 8]
    z = (qzeros[..., None] >> shifts) & 0xF
    q = q.reshape(qweight.shape[0], -1)  # [K, N]
    z = z.reshape(qzeros.shape[0], -1).repeat_interleave(group_size, dim=0)
    s = scales.float().repeat_interleave(group_size, dim=0)
    out = x.float() @ ((q - z).float() * s)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as Llama-family checkpoints define it: statistics in fp32, the normalized
    row rounded to x's dtype before the weight multiplies it."""
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)``: the residual stream and its norm."""
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


def rotary_embedding(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    cos: torch.Tensor,  # [max_position, head_dim // 2] fp32
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each head's two halves by its token's angles (the HF "rotate_half" way)."""
    cos = cos[positions][:, None, :]  # [num_tokens, 1, head_dim // 2]
    sin = sin[positions][:, None, :]
    return _rotate(query, cos, sin), _rotate(key, cos, sin)


def rotary_write_kv_cache(
    positions: torch.Tensor,  # [num_tokens] int64: each token's row of cos and sin
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,
    cos: torch.Tensor,  # [num_rows, head_dim // 2] fp32
    sin: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; negative slots are skipped
) -> torch.Tensor:  # the rotated queries
    """``rotary_embedding``, then ``write_kv_cache`` of the rotated keys (one launch on a GPU)."""
    query, key = rotary_embedding(positions, query, key, cos, sin)
    write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    return query


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # [..., 2 * width] -> [..., width]
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
