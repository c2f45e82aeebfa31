"""Which W4A16 kernel variant runs, and how it is launched, per GPU and shape bucket.

Variants (kernels/awq_gemm.py runs them):

- ``gemv``: M <= 8 only. Elementwise multiply + ``tl.sum`` over K, no ``tl.dot``: no
  16-row padding, and the dequantized weight never leaves registers.
- ``dot``: a tiled ``tl.dot`` GEMM (M padded to BLOCK_M >= 16), split over K when its
  tiles alone cannot fill the GPU.
- ``dequant_matmul``: dequantize the whole weight to 16 bits, then cuBLAS. Only worth it
  where a measurement says so (large M); it allocates a K x N temporary.

NOTE: no GPU has measured this table yet (`make gpu-check` prints what it measures):
every entry is what the static report (benchmarks/kernel_static.py) favours, by SASS
instructions per weight in the inner loop (sm_87 / sm_90): the GEMV 4.1 / 4.1 at M = 1
and 5.6 / 5.5 at M = 2 against ``dot``'s 8.3 / 8.2, but 9.3 / 9.0 and 15 at M = 4 and 8,
where ``dot`` (whose count does not grow with M) is favoured. The GEMV launches were
picked, among those that do not spill, for the fewest registers at a similar count; no
entry spills on sm_87 or sm_90.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

VARIANTS = ("gemv", "dot", "dequant_matmul")
GEMV_MAX_M = 8


@dataclass(frozen=True)
class AWQLaunch:
    """One variant and its launch configuration. ``block_m`` is ignored by ``gemv``
    (it takes the rows as they come, padded to a power of two)."""

    variant: str
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    block_m: int = 16
    group_m: int = 8  # tile rows walked together (L2 reuse of the weight tiles), dot only

    def __post_init__(self):
        assert self.variant in VARIANTS, self.variant
        assert self.variant != "gemv" or self.block_n >= 256, "rows of >= 128 bytes"


# The GEMV's launch per padded row count, whether or not the table below picks it there
# (bench_kernels and the static report compare it with dot at every M <= 8).
GEMV_LAUNCHES = {
    # 256 x 32 counts about the same (4.04 / 4.07 SASS a weight on sm_87 / sm_90) in 176
    # registers, which leave an SM one block of 8 warps; 512 x 8 takes ~100.
    1: AWQLaunch("gemv", block_n=512, block_k=8, num_warps=8, num_stages=1),
    2: AWQLaunch("gemv", block_n=256, block_k=16, num_warps=8, num_stages=1),
    4: AWQLaunch("gemv", block_n=256, block_k=8, num_warps=8, num_stages=1),
    8: AWQLaunch("gemv", block_n=512, block_k=4, num_warps=8, num_stages=1),
}

# (largest M of the bucket, launch) in increasing M; the last bucket takes any larger M.
Buckets = tuple[tuple[int, AWQLaunch], ...]

DEFAULT: Buckets = (
    (1, GEMV_LAUNCHES[1]),
    (2, GEMV_LAUNCHES[2]),
    # num_stages=3 here spills 8 bytes on sm_90 (static report); 2 does not.
    (16, AWQLaunch("dot", block_m=16, block_n=128, block_k=64, num_warps=4, num_stages=2)),
    (32, AWQLaunch("dot", block_m=32, block_n=128, block_k=64, num_warps=4, num_stages=3)),
    (64, AWQLaunch("dot", block_m=64, block_n=128, block_k=64, num_warps=8, num_stages=3)),
    (1 << 30, AWQLaunch("dot", block_m=128, block_n=128, block_k=32, num_warps=8, num_stages=4)),
)

# Compute capability (major * 10 + minor) -> buckets. Filled from `make gpu-check` runs
# (gpu-check.md ends with the measured buckets as Python, to review and paste here).
TABLE: dict[int, Buckets] = {87: DEFAULT, 90: DEFAULT}


def awq_launch_for(arch: int | None, num_rows: int, group_size: int) -> AWQLaunch:
    """The launch for ``num_rows`` rows on compute capability ``arch`` (None: not a GPU,
    e.g. Triton's interpreter, which takes the defaults)."""
    buckets = TABLE.get(arch, DEFAULT)
    launch = next((launch for max_rows, launch in buckets if num_rows <= max_rows), buckets[-1][1])
    # NOTE: a K tile must not straddle a quantization group.
    return dataclasses.replace(launch, block_k=min(launch.block_k, group_size))
