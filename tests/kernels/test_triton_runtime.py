"""What Triton needs to run the kernels in the images: a C compiler and Python's headers
in both runtime stages (it builds each kernel's launcher at the first launch), a kernel
cache on the persistent volume, and on x86 exactly the triton torch's CUDA build
requires, pinned alike for runtime and development, never on aarch64."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def runtime_stage(dockerfile: str) -> str:
    return re.split(r"^FROM .*$", (ROOT / dockerfile).read_text(), flags=re.MULTILINE)[-1]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.x86", "Dockerfile.jetson"])
def test_runtime_stage_can_build_launchers_and_keeps_the_cache(dockerfile):
    stage = runtime_stage(dockerfile)
    installs = " ".join(re.findall(r"apt-get install[^&]*", stage))
    assert {"gcc", "python3-dev", "libc6-dev"} <= set(installs.split())
    cache = re.search(r"TRITON_CACHE_DIR=(\S+)", stage)
    assert cache and cache.group(1).startswith("/data/edgechat/")
    assert '"/data/edgechat"' in stage  # a VOLUME: the cache outlives the container


def test_triton_pinned_exactly_for_x86_only_and_documented():
    requirements = re.findall(r'"(triton[^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert len(requirements) == 2 and len(set(requirements)) == 1  # runtime and dev alike
    pin = re.fullmatch(r"triton==([\d.]+); platform_machine == 'x86_64'", requirements[0])
    assert pin, requirements[0]
    assert f"triton {pin.group(1)}" in (ROOT / "docs/deploy.md").read_text()
