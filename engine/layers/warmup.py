"""Compile the Triton kernels a model will launch before it serves, so that no request
waits for the JIT (seconds per kernel on a first start; a load from TRITON_CACHE_DIR
after that). The engine calls it once the KV cache is bound and before CUDA graphs are
captured; the server reports ready only after it.

Triton compiles one kernel per specialization: per constexpr (the AWQ launch table's M
buckets, the GEMV's padded rows) and per integer argument that equals 1 or divides by 16
(M among them). So the model runs once per step shape class: decode batches of the
sizes graphs capture (and one odd size for eager steps), and prompts of each M bucket's
two ends (one of them a multiple of 16), for one sequence and for two.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from engine.layers.attention import AttentionMetadata

logger = logging.getLogger(__name__)

# Prompt token counts: both ends of the AWQ GEMM buckets 9-16, 17-32, 33-64 and beyond.
PREFILL_TOKENS = (9, 16, 17, 32, 33, 64, 65, 128)


def warmup_steps(max_num_seqs: int, max_num_batched_tokens: int) -> list[tuple[int, int]]:
    """(num_tokens, num_seqs) of every step shape class the engine can schedule."""
    batches = {1 << i for i in range(max_num_seqs.bit_length()) if 1 << i <= max_num_seqs}
    batches |= {max_num_seqs} | ({3} if max_num_seqs >= 3 else set())
    steps = [(batch, batch) for batch in sorted(batches)]  # decode: one token each
    prompts = [t for t in PREFILL_TOKENS if t <= max_num_batched_tokens]
    steps += [(tokens, 1) for tokens in prompts]
    steps += [(tokens, 2) for tokens in prompts[:2]]
    return steps


@torch.inference_mode()
def warm_up_kernels(
    model: nn.Module, block_size: int, max_num_seqs: int, max_num_batched_tokens: int
) -> float:
    """Run ``model`` (KV cache bound) once per step shape class; log each kernel compiled
    and the total. Writes nothing to the KV cache. Returns the seconds taken. (On the CPU
    it runs the torch twins and compiles nothing: a check that the steps are valid.)"""
    from triton import knobs

    device = next(model.parameters()).device

    def log_compiled(*args, **kwargs) -> None:
        logger.info("warm-up: compiled %s", kwargs["fn"].name)

    start = time.perf_counter()
    # NOTE: Triton's post-compile hook is process-wide: set only for the warm-up's span.
    with knobs.runtime.scope():
        knobs.runtime.jit_post_compile_hook = log_compiled
        for num_tokens, num_seqs in warmup_steps(max_num_seqs, max_num_batched_tokens):
            model(*_dummy_step(num_tokens, num_seqs, block_size, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    logger.info("warm-up: every kernel ready in %.1f s", seconds)
    return seconds


def _dummy_step(num_tokens: int, num_seqs: int, block_size: int, device: torch.device):
    """Inputs of a step: sequence i brings its share of the tokens, at positions from 0;
    every slot is -1 (the KV write skips it) and every block is block 0."""
    per_seq = [num_tokens // num_seqs + (i < num_tokens % num_seqs) for i in range(num_seqs)]
    starts = torch.tensor([0, *per_seq], device=device).cumsum(0).to(torch.int32)
    positions = torch.cat([torch.arange(n, device=device) for n in per_seq])
    max_blocks = -(-max(per_seq) // block_size)
    meta = AttentionMetadata(
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=device),
        block_tables=torch.zeros(num_seqs, max_blocks, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(per_seq, dtype=torch.int32, device=device),
        query_start_loc=starts,
    )
    input_ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
    return input_ids, positions, meta
