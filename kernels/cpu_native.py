"""The CPU's int4/int8 matmuls with int8 activations (kernels/cpu_quant_gemm.c), the fp32
ops between them (cpu_decode_ops.c) and a decoder layer's decode step chaining both
(cpu_decode_layer.c; exports declared in cpu_native.h), built at run time with the
machine's C compiler and loaded with ctypes.

The library is compiled once per source, compiler and CPU (``-march=native``: AVX2 on
x86, with VNNI's dot products where the CPU has them and 512-bit tile passes where it
has AVX-512 BW and VNNI; the dot-product instructions on Arm where the CPU has them)
into a cache directory, and reused by every later process; two processes building at
once each write a file of their own and rename it into place. Where no compiler works,
``load`` raises NativeBuildError with what went wrong, and the caller falls back to
torch's kernels.

Each linear is one call: it quantizes its activations (kernels/cpu_linear.py's
``quantize_activations`` is the torch twin of that step; ``quantize`` exposes it for
tests), shares the weight's rows among ``torch.get_num_threads()`` OpenMP threads (torch's
own libgomp, already loaded, runs them) and adds the bias.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCES = tuple(
    Path(__file__).with_name(name)
    for name in ("cpu_quant_gemm.c", "cpu_decode_ops.c", "cpu_decode_layer.c")
)
HEADER = Path(__file__).with_name("cpu_native.h")  # what they export, and the structs below
COMPILE_TIMEOUT_S = 120

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_F32 = ctypes.c_float
_INT = ctypes.c_int
_SIGNATURES = {
    "edgechat_quantize_rows": [_P, _I64, _I64, _I64, _P, _P, _P],
    "edgechat_int4_linear": [_P, _I64, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _P, _INT],
    "edgechat_int8_linear": [_P, _I64, _P, _P, _P, _I64, _I64, _I64, _P, _INT],
    "edgechat_add_rms_norm": [_P, _P, _P, _I64, _I64, _F32, _P, _P, _INT],
    "edgechat_silu_and_mul": [_P, _I64, _I64, _P, _INT],
    "edgechat_rotary_write_kv": [_P, _P, _I64, _P, _I64, _P, _I64, *[_I64] * 4, *[_P] * 6, _INT],
    "edgechat_decode_attention": [_P, _P, _P, _P, _I64, _P, *[_I64] * 5, _F32, _P, _INT],
    "edgechat_decoder_layer": [_P, _I64, *[_P] * 9, _I64, _P, _I64, _P, _P, _INT],
}


class LinearLayout(ctypes.Structure):
    """EdgechatLinear (kernels/cpu_native.h): one int4 or int8 linear's buffers."""

    _fields_ = [
        ("bits", _I64),
        ("out_features", _I64),
        ("in_features", _I64),
        ("group_size", _I64),
        ("activation_block", _I64),
        ("weight", _P),
        ("scales", _P),
        ("offsets", _P),
        ("bias", _P),
    ]


class DecoderLayerLayout(ctypes.Structure):
    """EdgechatDecoderLayer (kernels/cpu_native.h): a Llama-family decoder layer's shapes
    and buffers, as edgechat_decoder_layer reads them."""

    _fields_ = [
        ("hidden", _I64),
        ("heads", _I64),
        ("kv_heads", _I64),
        ("head_dim", _I64),
        ("intermediate", _I64),
        ("eps", _F32),
        ("scale", _F32),
        ("input_norm", _P),
        ("post_attention_norm", _P),
        ("qkv", LinearLayout),
        ("o", LinearLayout),
        ("gate_up", LinearLayout),
        ("down", LinearLayout),
    ]


class NativeBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded on this machine."""


class QuantizedActivations:
    """Rows of activations as the kernels read them: int8 codes [M, K], and per block of
    A in-features the scale and the scale times the codes' sum, [M, K/A] fp32 each."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, scaled_sums: torch.Tensor):
        self.codes, self.scales, self.scaled_sums = codes, scales, scaled_sums


class NativeKernels:
    def __init__(self, library: ctypes.CDLL, path: Path):
        for name, argtypes in _SIGNATURES.items():
            getattr(library, name).argtypes = argtypes
        library.edgechat_simd.restype = ctypes.c_char_p
        self._lib = library
        self.path = path
        self.simd = library.edgechat_simd().decode()  # which code path was compiled in

    def quantize(self, x: torch.Tensor, block: int) -> QuantizedActivations:
        """``x`` [M, K] fp32 contiguous in blocks of ``block`` (a multiple of 32 dividing K)."""
        rows, in_features = x.shape
        blocks = in_features // block
        codes = torch.empty(rows, in_features, dtype=torch.int8)
        scales = torch.empty(rows, blocks)
        scaled_sums = torch.empty(rows, blocks)
        self._lib.edgechat_quantize_rows(
            x.data_ptr(), rows, in_features, block, codes.data_ptr(), scales.data_ptr(),
            scaled_sums.data_ptr(),
        )  # fmt: skip
        return QuantizedActivations(codes, scales, scaled_sums)

    def int4_linear(
        self,
        x: torch.Tensor,  # [M, K] fp32, contiguous
        weight: torch.Tensor,  # tiles of rows (kernels/cpu_linear.py: pack_int4_native)
        scales: torch.Tensor,  # [tiles, K/G, rows] fp32
        offsets: torch.Tensor,  # [tiles, K/G, rows] fp32: zero point times scale
        group_size: int,
        activation_block: int,  # in-features per activation scale: a multiple of 32 dividing G
        out_features: int,  # N: the tiles' rows without their padding
        bias: torch.Tensor | None = None,  # [N] fp32
    ) -> torch.Tensor:  # [M, N] fp32
        out = torch.empty(x.shape[0], out_features)
        status = self._lib.edgechat_int4_linear(
            x.data_ptr(), x.shape[0], weight.data_ptr(), scales.data_ptr(), offsets.data_ptr(),
            _pointer(bias), out_features, x.shape[1], group_size, activation_block, out.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        return _checked(status, out)

    def int8_linear(
        self,
        x: torch.Tensor,  # [M, K] fp32, contiguous
        weight: torch.Tensor,  # [N, K] int8 in tiles (kernels/cpu_linear.py: tile_int8_rows)
        scales: torch.Tensor,  # [N] fp32
        activation_block: int,  # in-features per activation scale: a multiple of 32 dividing K
        bias: torch.Tensor | None = None,  # [N] fp32
    ) -> torch.Tensor:  # [M, N] fp32
        out = torch.empty(x.shape[0], weight.shape[0])
        status = self._lib.edgechat_int8_linear(
            x.data_ptr(), x.shape[0], weight.data_ptr(), scales.data_ptr(), _pointer(bias),
            weight.shape[0], x.shape[1], activation_block, out.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        return _checked(status, out)

    # The decode path's other ops (kernels/cpu_decode_ops.c), for kernels/cpu_ops.py,
    # which checks their tensors (fp32, contiguous rows) first.

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # (norm, x + residual)
        hidden = x.shape[-1]
        out = torch.empty_like(x)
        summed = None if residual is None else torch.empty_like(x)
        self._lib.edgechat_add_rms_norm(
            x.data_ptr(), _pointer(residual), weight.data_ptr(), x.numel() // hidden, hidden,
            eps, out.data_ptr(), _pointer(summed), torch.get_num_threads(),
        )  # fmt: skip
        return out, summed

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:  # [..., 2W] -> [..., W]
        width = x.shape[-1] // 2
        out = x.new_empty(*x.shape[:-1], width)
        self._lib.edgechat_silu_and_mul(
            x.data_ptr(), x.numel() // (2 * width), width, out.data_ptr(), torch.get_num_threads()
        )
        return out

    def rotary_write_kv(
        self,
        rows: torch.Tensor,  # [tokens] int64
        query: torch.Tensor,  # [tokens, heads, head_dim], heads contiguous
        key: torch.Tensor,  # [tokens, kv_heads, head_dim], likewise
        value: torch.Tensor,
        cos: torch.Tensor,  # [*, head_dim / 2] contiguous
        sin: torch.Tensor,
        k_cache: torch.Tensor,  # contiguous
        v_cache: torch.Tensor,
        slots: torch.Tensor,  # [tokens] int64
    ) -> torch.Tensor:  # the rotated queries, [tokens, heads, head_dim]
        tokens, heads, head_dim = query.shape
        out = query.new_empty(tokens, heads, head_dim)
        self._lib.edgechat_rotary_write_kv(
            rows.data_ptr(), query.data_ptr(), query.stride(0), key.data_ptr(), key.stride(0),
            value.data_ptr(), value.stride(0), tokens, heads, key.shape[1], head_dim,
            cos.data_ptr(), sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
            slots.data_ptr(), out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return out

    def decode_attention(
        self,
        query: torch.Tensor,  # [seqs, heads, head_dim] contiguous: one query a sequence
        k_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, head_dim] contiguous
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,  # [seqs or more, max_blocks] int32, rows contiguous
        seq_lens: torch.Tensor,  # [seqs] int32 contiguous
        scale: float,
    ) -> torch.Tensor:  # [seqs, heads, head_dim]
        seqs, heads, head_dim = query.shape
        out = torch.empty_like(query)
        status = self._lib.edgechat_decode_attention(
            query.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(),
            block_tables.stride(0), seq_lens.data_ptr(), seqs, heads, k_cache.shape[2],
            head_dim, k_cache.shape[1], scale, out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return _checked(status, out)

    def decoder_layer(
        self,
        layer: DecoderLayerLayout,  # its buffers kept alive by the caller
        x: torch.Tensor,  # [seqs, hidden] fp32 contiguous: one new token a sequence
        residual: torch.Tensor | None,  # likewise; None: x is the stream (the first layer)
        rows: torch.Tensor,  # [seqs] int64: each token's row of cos and sin
        cos: torch.Tensor,  # [*, head_dim / 2] fp32 contiguous
        sin: torch.Tensor,
        k_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, head_dim] contiguous
        v_cache: torch.Tensor,
        slots: torch.Tensor,  # [seqs] int64
        block_tables: torch.Tensor,  # [seqs or more, max_blocks] int32, rows contiguous
        seq_lens: torch.Tensor,  # [seqs] int32 contiguous
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (the layer's MLP output, the stream before it)
        hidden_out, residual_out = torch.empty_like(x), torch.empty_like(x)
        status = self._lib.edgechat_decoder_layer(
            ctypes.byref(layer), x.shape[0], x.data_ptr(), _pointer(residual), rows.data_ptr(),
            cos.data_ptr(), sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
            slots.data_ptr(), block_tables.data_ptr(), block_tables.stride(0),
            seq_lens.data_ptr(), k_cache.shape[1], hidden_out.data_ptr(),
            residual_out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        _checked(status, hidden_out)
        return hidden_out, residual_out


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _checked(status: int, out: torch.Tensor) -> torch.Tensor:
    if status != 0:  # its scratch (quantized activations, scores) could not be allocated
        raise MemoryError("the native CPU kernel could not allocate its scratch buffers")
    return out


def load(cache_dir: Path, arch_flag: str | None = None) -> NativeKernels:
    """The kernels, compiled into ``cache_dir`` unless this source, compiler and CPU
    have been built before; NativeBuildError if that is impossible here. ``arch_flag``
    replaces ``-march=native`` (tests build the portable C path with it)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise NativeBuildError("no C compiler found (set CC, or install gcc)")
    flags = ["-O3", arch_flag or _native_arch_flag(), "-fopenmp", "-shared", "-fPIC"]
    key = hashlib.sha256()
    sources = [source.read_bytes() for source in (*SOURCES, HEADER)]
    for part in (*sources, _compiler_version(compiler), " ".join(flags), _cpu_id()):
        key.update(part if isinstance(part, bytes) else part.encode())
    path = cache_dir / f"cpu_quant_gemm-{key.hexdigest()[:16]}.so"
    if not path.exists():
        _compile(compiler, flags, path)
    try:
        return NativeKernels(ctypes.CDLL(str(path)), path)
    except OSError as e:
        raise NativeBuildError(f"cannot load {path}: {e}") from None


def _compile(compiler: str, flags: list[str], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so.tmp")
        os.close(fd)
    except OSError as e:
        raise NativeBuildError(f"cannot write to {path.parent}: {e}") from None
    try:
        result = subprocess.run(
            [compiler, *flags, *map(str, SOURCES), "-o", tmp],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise NativeBuildError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeBuildError(f"cannot run {compiler}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _native_arch_flag() -> str:
    # GCC and clang take -march=native on x86 and -mcpu=native on Arm.
    return "-mcpu=native" if platform.machine() in ("aarch64", "arm64") else "-march=native"


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeBuildError(f"cannot run {compiler}: {e}") from None


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() + platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    return "\n".join(sorted({line for line in lines if line.startswith(wanted)}))
