"""TinyChat's own AWQ checkpoints (llm-awq's "v2" ``*-w4-g128-awq-v2.pt``, as published in
``llm/`` of the VILA1.5 ``*-AWQ`` repositories), converted at load time to the AutoAWQ GEMM
tensors the engine runs. docs/tinychat-format.md describes the format and its sources.

Per quantized linear layer (N out, K in features, G group size) TinyChat stores:
``qweight`` int16 [N/4, K]: four output rows interleaved per K_STRIDE input columns, each
int16 word holding four 4-bit codes, shuffled for its GEMV kernel (``unpack_qweight``);
``scales`` and ``scaled_zeros`` fp16 [P, N]: one row per input group, zero-padded to P
rows; ``scaled_zeros = -z * s``, so ``w = q * s + scaled_zeros = (q - z) * s``.
"""

from __future__ import annotations

import fnmatch
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from engine.errors import ModelLoadError, UnsupportedModelError
from engine.quant.pack import pack_int4

FILE_PATTERN = "*-w4-g*-awq*.pt"
INTERLEAVE = 4  # output rows sharing one run of int16 words
K_STRIDE = 64  # input columns of each row per interleaved tile
NIBBLE_SHIFTS = torch.arange(4, dtype=torch.int32) * 4  # 4 codes per int16 word
# Recovered zeros -scaled_zeros / scales are off an integer by at most 15 * 2^-11 (fp16
# rounding of z * s); anything further was not written by TinyChat's quantizer.
ZERO_TOLERANCE = 1 / 32
QUANT_PARTS = ("qweight", "scales", "scaled_zeros")
AUTOAWQ_PARTS = ("qweight", "qzeros", "scales")


def is_tinychat_checkpoint(path: Path) -> bool:
    """Whether ``path`` is named like the int4 checkpoints TinyChat writes."""
    return fnmatch.fnmatch(path.name, FILE_PATTERN)


def find_tinychat_checkpoint(model_dir: Path) -> Path | None:
    """The TinyChat checkpoint of a model directory (VILA keeps it in ``llm/``), if any."""
    found = [
        path
        for folder in (model_dir / "llm", model_dir)
        if folder.is_dir()
        for path in sorted(folder.iterdir())
        if path.is_file() and is_tinychat_checkpoint(path)
    ]
    if len(found) > 1:
        names = ", ".join(str(path) for path in found)
        raise ModelLoadError(f"{model_dir} holds several TinyChat AWQ checkpoints: {names}")
    return found[0] if found else None


def open_tinychat_checkpoint(path: Path) -> TinyChatCheckpoint:
    """Read a TinyChat ``.pt`` (tensors only: no code runs) and check it."""
    try:
        # NOTE: mmap keeps the file's tensors as clean file-backed pages, which the OS can
        # drop under pressure, instead of a second anonymous copy of the whole checkpoint.
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise ModelLoadError(f"cannot read the TinyChat checkpoint {path}: {e}") from None
    if not isinstance(state_dict, Mapping):
        raise ModelLoadError(
            f"{path} holds a {type(state_dict).__name__}, not a state dict of tensors"
        )
    return TinyChatCheckpoint(state_dict)


class TinyChatCheckpoint:
    """A TinyChat state dict, checked whole up front (every tensor's kind, each int4
    layer's parts and layout, one group size for all), then converted to AutoAWQ GEMM
    tensors one layer at a time by ``tensors()``, so that a loader copying them into a
    model never holds a second copy of the whole model."""

    def __init__(self, state_dict: Mapping[str, object]):
        self.dense: dict[str, torch.Tensor] = {}
        self.layers: dict[str, dict[str, torch.Tensor]] = {}
        for name, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                raise ModelLoadError(f"checkpoint entry {name!r} is a {type(value).__name__}")
            prefix, _, part = name.rpartition(".")
            if part == "qzeros" or (part == "qweight" and value.dtype == torch.int32):
                raise UnsupportedModelError(
                    f"{name} is in the older TinyChat (v1) layout; repack the checkpoint with "
                    "llm-awq's tinychat/offline-weight-repacker.py to the v2 layout (*-v2.pt)"
                )
            if part in QUANT_PARTS:
                self.layers.setdefault(prefix, {})[part] = value
            elif value.is_floating_point():
                self.dense[name] = value
            else:
                raise ModelLoadError(
                    f"checkpoint tensor {name} ({value.dtype}) is of no kind TinyChat writes: "
                    f"expected floating-point weights or a layer's {', '.join(QUANT_PARTS)}"
                )
        if not self.layers:
            raise ModelLoadError("the checkpoint has no TinyChat int4 layers (no .qweight)")
        group_sizes: dict[int, str] = {}
        for prefix, parts in sorted(self.layers.items()):
            missing = [part for part in QUANT_PARTS if part not in parts]
            if missing:
                raise ModelLoadError(f"int4 layer {prefix} lacks {', '.join(missing)}")
            group_sizes.setdefault(_layer_group_size(prefix, **parts), prefix)
        if len(group_sizes) > 1:
            found = ", ".join(f"{size} ({prefix})" for size, prefix in group_sizes.items())
            raise ModelLoadError(f"the checkpoint mixes group sizes: {found}")
        self.group_size: int = next(iter(group_sizes))

    @property
    def quantized_layers(self) -> tuple[str, ...]:
        """Prefixes of the int4 layers, sorted."""
        return tuple(sorted(self.layers))

    def tensors(self, device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)``: the dense tensors as stored, then each int4 layer's
        ``qweight``, ``qzeros`` and ``scales``, converted on ``device`` (a GPU converts
        a 3B model in a moment; a CPU takes a few seconds per billion weights)."""
        yield from self.dense.items()
        for prefix, parts in sorted(self.layers.items()):
            on_device = {part: tensor.to(device) for part, tensor in parts.items()}
            converted = convert_layer(prefix, **on_device, group_size=self.group_size)
            yield from zip((f"{prefix}.{part}" for part in AUTOAWQ_PARTS), converted)


def convert_layer(
    prefix: str,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    scaled_zeros: torch.Tensor,
    group_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's TinyChat tensors -> AutoAWQ ``(qweight, qzeros, scales)``, on the
    tensors' device."""
    num_groups = qweight.shape[1] // group_size
    scales = scales[:num_groups]
    zeros = _zeros(prefix, scales, scaled_zeros[:num_groups])
    codes = unpack_qweight(qweight)  # [N, K]
    return pack_int4(codes.t().contiguous()), pack_int4(zeros), scales.contiguous()


def unpack_qweight(qweight: torch.Tensor) -> torch.Tensor:
    """TinyChat's int16 [N/4, K] -> int32 codes [N, K] (out x in): llm-awq's
    ``pack_intweight`` undone step by step, last step first."""
    num_row_blocks, in_features = qweight.shape
    out_features = num_row_blocks * INTERLEAVE
    words = qweight.to(torch.int32) & 0xFFFF
    codes = (words[..., None] >> NIBBLE_SHIFTS.to(words.device)) & 0xF  # [N/4, K, 4]
    # Each run of K_STRIDE words holds a row-major [INTERLEAVE, K_STRIDE] tile of codes.
    tiles = codes.reshape(num_row_blocks, in_features // K_STRIDE, INTERLEAVE, K_STRIDE)
    codes = tiles.permute(0, 2, 1, 3).reshape(out_features, in_features)
    # Within each 8 codes, stored order [0, 2, 4, 6, 1, 3, 5, 7] (pairs for its dequant).
    codes = codes.reshape(out_features, -1, 2, 4).transpose(-1, -2)
    # Within each 32, stored order [0, 1, 8, 9, 16, 17, 24, 25, 2, 3, 10, ...].
    codes = codes.reshape(out_features, -1, 4, 4, 2).transpose(2, 3)
    return codes.reshape(out_features, in_features)


def padded_group_rows(in_features: int, group_size: int) -> int | None:
    """Rows of TinyChat's scales for a layer (its ``calculate_zeros_width`` x 8): the
    groups rounded up to 8, then to 16 (G 64) or 32 (G 32); None for a G it cannot write."""
    multiple = {32: 32, 64: 16}.get(group_size, 8 if group_size >= 128 else None)
    if multiple is None:
        return None
    num_groups = in_features // group_size
    return -(-num_groups // multiple) * multiple


def _check_layout(
    prefix: str, qweight: torch.Tensor, scales: torch.Tensor, scaled_zeros: torch.Tensor
) -> None:
    if qweight.dtype != torch.int16 or qweight.dim() != 2:
        raise ModelLoadError(
            f"{prefix}.qweight is {qweight.dtype} {list(qweight.shape)}; expected int16 [N/4, K]"
        )
    out_features = qweight.shape[0] * INTERLEAVE
    in_features = qweight.shape[1]
    if in_features % K_STRIDE or out_features % 8:
        raise ModelLoadError(
            f"{prefix}.qweight {list(qweight.shape)} gives {out_features} x {in_features} "
            f"(out x in) features; expected in features a multiple of {K_STRIDE} and out "
            "features a multiple of 8"
        )
    for name, tensor in (("scales", scales), ("scaled_zeros", scaled_zeros)):
        if tensor.dtype != torch.float16 or tensor.dim() != 2 or tensor.shape[1] != out_features:
            raise ModelLoadError(
                f"{prefix}.{name} is {tensor.dtype} {list(tensor.shape)}; expected float16 "
                f"[groups (padded), {out_features}] to match {prefix}.qweight"
            )
    if scales.shape != scaled_zeros.shape:
        raise ModelLoadError(
            f"{prefix}.scales {list(scales.shape)} and .scaled_zeros "
            f"{list(scaled_zeros.shape)} differ in shape"
        )


def _layer_group_size(
    prefix: str, qweight: torch.Tensor, scales: torch.Tensor, scaled_zeros: torch.Tensor
) -> int:
    """The group size, from the rows of real scales (positive: TinyChat's quantizer
    clamps them) before the zero padding; checks the layer's layout on the way."""
    _check_layout(prefix, qweight, scales, scaled_zeros)
    in_features = qweight.shape[1]
    used_rows = torch.nonzero((scales != 0).any(dim=1))
    num_groups = int(used_rows[-1]) + 1 if len(used_rows) else 0
    if num_groups == 0 or in_features % num_groups:
        raise ModelLoadError(
            f"{prefix}.scales has {num_groups} non-zero group rows, which do not divide the "
            f"{in_features} in features into groups"
        )
    group_size = in_features // num_groups
    expected_rows = padded_group_rows(in_features, group_size)
    if expected_rows != scales.shape[0] or scaled_zeros[num_groups:].any():
        raise ModelLoadError(
            f"{prefix}.scales has {scales.shape[0]} rows for {num_groups} groups of "
            f"{group_size}; TinyChat pads them to {expected_rows} rows of zeros"
        )
    return group_size


def _zeros(prefix: str, scales: torch.Tensor, scaled_zeros: torch.Tensor) -> torch.Tensor:
    """Integer zero points [K/G, N] from ``scaled_zeros = -z * s``."""
    s, scaled = scales.float(), scaled_zeros.float()
    zeros = -scaled / torch.where(s == 0, 1.0, s)
    # A zero scale makes the group's weights 0 whatever z is; take z = 0 there.
    zeros = torch.where(s == 0, 0.0, zeros)
    rounded = zeros.round()
    bad = ((zeros - rounded).abs() > ZERO_TOLERANCE) | (rounded < 0) | (rounded > 15)
    bad |= (s == 0) & (scaled != 0)
    if bad.any():
        group, column = (int(i) for i in torch.nonzero(bad)[0])
        raise ModelLoadError(
            f"{prefix}.scaled_zeros / .scales do not give integer zero points in [0, 15]: "
            f"group {group}, column {column} gives {float(zeros[group, column]):.4f} "
            f"(scaled_zeros {float(scaled[group, column])}, scales {float(s[group, column])})"
        )
    return rounded.to(torch.int32)
