"""A checkpoint's quantization settings: config.json's ``quantization_config``, or the
``quant_config.json`` of older AutoAWQ repositories. We serve AutoAWQ "GEMM" int4 with zero
points; everything else is refused with a message that says what is supported.

NOTE: we read config.json ourselves rather than trusting transformers' config object,
which may rewrite or drop the quantization settings from one version to the next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelLoadError, UnsupportedModelError

SUPPORTED_GROUP_SIZES = (32, 64, 128)
SUPPORTED = (
    "AutoAWQ GEMM checkpoints (quant_method 'awq', version 'gemm', 4 bits, zero_point true, "
    f"group size {', '.join(map(str, SUPPORTED_GROUP_SIZES))})"
)


@dataclass(frozen=True)
class AWQConfig:
    group_size: int
    modules_to_not_convert: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.group_size not in SUPPORTED_GROUP_SIZES:
            raise UnsupportedModelError(
                f"AWQ group size {self.group_size} is not supported; supported: {SUPPORTED}"
            )

    def is_quantized(self, module_name: str) -> bool:
        """Whether AutoAWQ quantized the linear layer ``module_name`` (it matches the
        entries of modules_to_not_convert as substrings of the full name)."""
        return not any(skip in module_name for skip in self.modules_to_not_convert)


def read_quant_config(model_dir: Path) -> AWQConfig | None:
    """The checkpoint's AWQ settings; None for an unquantized checkpoint."""
    raw = _read_json(model_dir / "config.json").get("quantization_config")
    legacy = model_dir / "quant_config.json"
    if raw is None and legacy.exists():
        raw = _read_json(legacy)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"the quantization config of {model_dir} is not a JSON object")
    return parse_awq_config(raw)


def parse_awq_config(raw: dict) -> AWQConfig:
    """Accepts both spellings: ``bits``/``group_size`` (transformers) and
    ``w_bit``/``q_group_size`` (AutoAWQ's quant_config.json, which names no method)."""
    method = str(raw.get("quant_method", "awq")).lower()
    if method != "awq":
        raise UnsupportedModelError(f"quantization method {method!r} is not supported: {SUPPORTED}")
    version = str(raw.get("version", "gemm")).lower()
    if version != "gemm":
        raise UnsupportedModelError(
            f"AWQ version {version!r} is not supported (its packing differs): {SUPPORTED}"
        )
    bits = raw.get("bits", raw.get("w_bit", 4))
    if bits != 4:
        raise UnsupportedModelError(f"{bits}-bit AWQ is not supported: {SUPPORTED}")
    if raw.get("zero_point", True) is not True:
        raise UnsupportedModelError(f"AWQ without zero points is not supported: {SUPPORTED}")
    group_size = raw.get("group_size", raw.get("q_group_size"))
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise UnsupportedModelError(f"AWQ group size {group_size!r} is not supported: {SUPPORTED}")
    skip = raw.get("modules_to_not_convert") or ()
    if isinstance(skip, str) or not all(isinstance(name, str) for name in skip):
        raise ModelLoadError(f"modules_to_not_convert must be a list of names, got {skip!r}")
    return AWQConfig(group_size=group_size, modules_to_not_convert=tuple(skip))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data
