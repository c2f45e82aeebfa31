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


def to_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)``, with no call where x has that dtype already: on the CPU decode path
    a call's argument parsing costs more than the row it would convert."""
    return x if x.dtype == dtype else x.to(dtype)


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; negative slots are skipped
    negative_slots: bool = True,  # False: the caller knows there are none (no check)
) -> None:
    """Store each new token's K and V at its slot (none for a negative slot: a padding
    row, as the kernel warm-up and CUDA graphs pass them)."""
    num_kv_heads, head_dim = k_cache.shape[2:]
    if negative_slots and slot_mapping.numel() and slot_mapping.min().item() < 0:
        keep = slot_mapping >= 0
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(
        0, slot_mapping, to_dtype(key, k_cache.dtype)
    )
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(
        0, slot_mapping, to_dtype(value, v_cache.dtype)
    )


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
    host_lens: tuple[list[int], list[int]] | None = None,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal attention of each sequence's new tokens over its whole paged context.

    Sequence ``i`` has ``q_i = query_start_loc[i+1] - query_start_loc[i]`` new tokens at
    positions ``seq_lens[i] - q_i .. seq_lens[i] - 1`` (whose K/V are already written);
    decode is ``q_i = 1``, a prefill ``q_i = seq_lens[i]``, a chunked or prefix-cached
    prefill anything between. Grouped-query heads share their KV head. ``host_lens``:
    ``seq_lens`` and ``query_start_loc`` as lists, where the caller has them (every layer
    would otherwise read the same tensors back).

    One sequence at a time: its blocks are gathered whole (a copy of its own context,
    nothing padded to the batch's longest) and attended with two matmuls and an fp32
    softmax, so the work is proportional to each sequence's context. A batch of decodes
    whose contexts are alike in length is attended at once instead (``_attend_decodes``).
    """
    if host_lens is None:
        host_lens = (seq_lens.tolist(), query_start_loc.tolist())
    lens, starts = host_lens
    if _alike_decodes(lens, starts):
        return to_dtype(
            _attend_decodes(query, k_cache, v_cache, block_tables, lens, scale), query.dtype
        )
    block_size = k_cache.shape[1]
    out = []
    for i, seq_len in enumerate(lens):
        blocks = block_tables[i, : -(-seq_len // block_size)]
        keys = _gather_context(k_cache, blocks, seq_len)
        values = _gather_context(v_cache, blocks, seq_len)
        out.append(_attend(query[starts[i] : starts[i + 1]], keys, values, scale))
    if not out:
        return torch.empty_like(query)
    return to_dtype(out[0] if len(out) == 1 else torch.cat(out), query.dtype)


# Decodes are batched while padding every context to the longest at most doubles the work.
MAX_DECODE_PADDING = 2


def _alike_decodes(lens: list[int], starts: list[int]) -> bool:
    """Whether every sequence decodes one token (a query each) and the contexts, padded
    to the longest, take at most MAX_DECODE_PADDING times their own work."""
    num_seqs = len(lens)
    return (
        num_seqs > 1
        and starts[-1] == num_seqs
        and max(lens) * num_seqs <= MAX_DECODE_PADDING * sum(lens)
    )


def _attend_decodes(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]: one query a sequence
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    lens: list[int],
    scale: float,
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim] fp32
    """Decode attention for the whole batch in one gather and two batched matmuls: each
    context padded to the longest with keys masked out. A few ops instead of a dozen per
    sequence, which is what decode on a CPU spends its time outside the linears on.
    The padding rows are whatever the blocks behind a table's end hold (stale but valid
    block ids): their scores are masked and their values zeroed, so not even a NaN there
    reaches the output."""
    num_seqs, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1:3]
    longest = max(lens)
    blocks = block_tables[:num_seqs, : -(-longest // block_size)].reshape(-1)

    def gather(cache: torch.Tensor) -> torch.Tensor:  # [num_seqs, kv, longest, head_dim]
        rows = cache.index_select(0, blocks).view(num_seqs, -1, num_kv_heads, head_dim)
        return to_dtype(rows[:, :longest], torch.float32).transpose(1, 2)

    q = to_dtype(query, torch.float32) * scale
    q = q.view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.matmul(q, gather(k_cache).transpose(2, 3))  # [seqs, kv, group, longest]
    device = query.device
    padding = torch.arange(longest, device=device) >= torch.tensor(lens, device=device)[:, None]
    scores.masked_fill_(padding[:, None, None], float("-inf"))
    values = gather(v_cache).masked_fill_(padding[:, None, :, None], 0)
    heads = torch.matmul(scores.softmax(-1), values)  # [seqs, kv, group, head_dim]
    return heads.view(num_seqs, num_heads, head_dim)


def _gather_context(
    cache: torch.Tensor, blocks: torch.Tensor, seq_len: int
) -> torch.Tensor:  # [seq_len, num_kv_heads, head_dim] fp32
    rows = cache.index_select(0, blocks).flatten(0, 1)
    return to_dtype(rows[:seq_len], torch.float32)


def _attend(
    query: torch.Tensor,  # [num_queries, num_heads, head_dim]: the context's last positions
    keys: torch.Tensor,  # [seq_len, num_kv_heads, head_dim] fp32
    values: torch.Tensor,
    scale: float,
) -> torch.Tensor:  # [num_queries, num_heads, head_dim] fp32
    num_queries, num_heads = query.shape[:2]
    seq_len = keys.shape[0]
    # NOTE: strided views, no copies: each KV head's [seq_len, head_dim] rows are a matrix
    # with leading dimension num_kv_heads * head_dim, which the batched matmul reads as is.
    keys_t = keys.permute(1, 2, 0)  # [kv, head_dim, seq_len]
    values = values.transpose(0, 1)  # [kv, seq_len, head_dim]
    chunk = max(1, MAX_SCORES_PER_CHUNK // (num_heads * seq_len))
    if num_queries <= chunk:
        return _attend_rows(query, keys_t, values, scale, seq_len - num_queries)
    out = [
        _attend_rows(
            query[first : first + chunk], keys_t, values, scale, seq_len - num_queries + first
        )
        for first in range(0, num_queries, chunk)
    ]
    return torch.cat(out)


def _attend_rows(
    query: torch.Tensor,  # [rows, num_heads, head_dim]
    keys_t: torch.Tensor,  # [kv, head_dim, seq_len] fp32
    values: torch.Tensor,  # [kv, seq_len, head_dim] fp32
    scale: float,
    first_pos: int,  # the first query's position
) -> torch.Tensor:  # [rows, num_heads, head_dim] fp32
    rows, num_heads, head_dim = query.shape
    num_kv_heads, _, seq_len = keys_t.shape
    group = num_heads // num_kv_heads
    q = to_dtype(query, torch.float32) * scale  # fewer products than the scores
    # [kv, rows * group, head_dim]: a KV head's query heads, row after row (one row, as at
    # decode: that is the row's own layout)
    if rows > 1:
        q = q.view(rows, num_kv_heads, group, head_dim).transpose(0, 1)
    q = q.reshape(num_kv_heads, rows * group, head_dim)
    scores = torch.matmul(q, keys_t)  # [kv, rows * group, seq_len]
    if first_pos < seq_len - 1:  # some query precedes a key: mask its future
        key_pos = torch.arange(seq_len, device=query.device)
        future = key_pos > (first_pos + torch.arange(rows, device=query.device))[:, None]
        scores.view(num_kv_heads, rows, group, seq_len).masked_fill_(
            future[None, :, None], float("-inf")
        )
    heads = torch.matmul(scores.softmax(-1), values)  # [kv, rows * group, head_dim]
    if rows > 1:
        heads = heads.view(num_kv_heads, rows, group, head_dim).transpose(0, 1)
    return heads.reshape(rows, num_heads, head_dim)


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


def awq_linear_silu_mul(
    x: torch.Tensor,  # [..., K]
    qweight: torch.Tensor,  # [K, N/8] int32: gate | up, each N/2 wide
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # [..., N/2]
    return silu_and_mul(awq_linear(x, qweight, qzeros, scales, group_size, bias))


_FUSED_RMS_NORM = hasattr(F, "rms_norm")  # torch >= 2.4 (pyproject allows 2.3)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as Llama-family checkpoints define it: statistics in fp32, the normalized
    row rounded to x's dtype before the weight multiplies it."""
    if _FUSED_RMS_NORM and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32:
        # One call for eight (each op's dispatch costs more than a decode row's arithmetic):
        # torch's CPU rms_norm is this formula, bit for bit, in fp32 (in bf16 or fp16 it
        # multiplies by the weight before rounding to x's dtype, so those stay below).
        return F.rms_norm(x, weight.shape, weight, eps)
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
    num_heads = query.shape[1]
    # Queries and keys in one pass: at decode each op's dispatch costs more than its rows.
    rotated = _rotate(torch.cat((query, key), dim=1), cos[positions], sin[positions])
    return rotated[:, :num_heads], rotated[:, num_heads:]


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
    negative_slots: bool = True,  # False: the caller knows there are none (no check)
) -> torch.Tensor:  # the rotated queries
    """``rotary_embedding``, then ``write_kv_cache`` of the rotated keys (one launch on a GPU)."""
    query, key = rotary_embedding(positions, query, key, cos, sin)
    write_kv_cache(key, value, k_cache, v_cache, slot_mapping, negative_slots)
    return query


def _rotate(
    x: torch.Tensor,  # [num_tokens, heads, head_dim]
    cos: torch.Tensor,  # [num_tokens, head_dim // 2] fp32
    sin: torch.Tensor,
) -> torch.Tensor:
    """``(x1 cos - x2 sin, x2 cos + x1 sin)`` for each head's halves ``(x1, x2)``, in fp32:
    the halves times cos plus the swapped halves times ``(-sin, sin)``. Each product is
    rounded as in the formula and ``a + -b`` is ``a - b`` exactly: the same bits."""
    # [num_tokens, heads, 2, head_dim // 2]
    halves = to_dtype(x, torch.float32).unflatten(-1, (2, -1))
    signed_sin = torch.stack((-sin, sin), dim=1)[:, None]  # [num_tokens, 1, 2, head_dim // 2]
    rotated = halves * cos[:, None, None] + halves.flip(2) * signed_sin
    return to_dtype(rotated.flatten(-2), x.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # [..., 2 * width] -> [..., width]
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
