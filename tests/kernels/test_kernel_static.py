"""The static report's loop finder (the report itself runs in the gpu-check dry run,
tests/kernels/test_gpu_check.py, which fails on any spill)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from static_compile import _loop_length, _ptx_branch, _ptx_label, _sass_branch, _sass_label  # noqa: E402

SASS = """
        /*0010*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0020*/                   LOP3.LUT R2, R3, 0xf, RZ, 0xc0, !PT ;
        /*0030*/                   FADD R2, R2, -8388608 ;
        /*0040*/                   FFMA R4, R2, R5, R4 ;
        /*0050*/               @P0 BRA `(.L_x_1) ;
        /*0060*/                   EXIT ;
"""
PTX = """
	mov.u32 	%r1, 0;
$L__BB0_2:
	and.b32 	%r2, %r1, 15;
	add.s32 	%r1, %r1, 1;
	setp.lt.s32 	%p1, %r1, 8;
	@%p1 bra 	$L__BB0_2;
$L__BB0_3:
	ret;
"""


def test_loop_length_counts_the_body_up_to_the_backward_branch():
    assert _loop_length(SASS.splitlines(), _sass_label, _sass_branch) == 4
    assert _loop_length(PTX.splitlines(), _ptx_label, _ptx_branch) == 4


def test_a_forward_branch_is_no_loop():
    lines = ["  @P0 BRA `(.L_x_7) ;", ".L_x_7:", "  EXIT ;"]
    assert _loop_length(lines, _sass_label, _sass_branch) == 0
