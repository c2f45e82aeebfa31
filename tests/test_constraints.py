"""constraints.txt (what `make test` installs) still satisfies pyproject.toml.

Editing a dependency in pyproject.toml without `make lock` either leaves the new range
unpinned or makes pip refuse the install; this names the requirement instead.
"""

from __future__ import annotations

import functools
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

# The platforms edgechat runs on: JetPack 6's Python 3.10 on aarch64, x86 images and dev
# machines on newer Pythons.
ENVIRONMENTS = [
    {"python_version": v, "python_full_version": f"{v}.0", "platform_machine": machine,
     "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
    for v in ("3.10", "3.11", "3.12")
    for machine in ("x86_64", "aarch64")
]


@functools.cache
def pins() -> tuple[Requirement, ...]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return tuple(Requirement(line) for line in lines if line and not line[0].isspace()
                 and not line.startswith("#"))


def applies(requirement: Requirement, environment: dict[str, str]) -> bool:
    marker = requirement.marker
    return marker is None or marker.evaluate({**environment, "extra": "dev"})


def pinned_version(name: str, environment: dict[str, str]) -> str | None:
    name = canonicalize_name(name)
    matches = [pin for pin in pins()
               if canonicalize_name(pin.name) == name and applies(pin, environment)]
    assert len(matches) <= 1, matches
    if not matches:
        return None
    (exact,) = matches[0].specifier  # every line is one == pin (the test below)
    return exact.version


def test_every_line_is_an_exact_pin():
    assert pins()
    for pin in pins():
        assert [s.operator for s in pin.specifier] == ["=="], pin


@pytest.mark.parametrize("environment", ENVIRONMENTS,
                         ids=lambda e: f"py{e['python_version']}-{e['platform_machine']}")
def test_pins_satisfy_every_requirement(environment):
    needed = [Requirement(r) for r in requires("edgechat")]
    assert any(r.name == "pytest" for r in needed)  # the dev extra is read too
    for requirement in needed:
        if not applies(requirement, environment):
            continue
        version = pinned_version(requirement.name, environment)
        assert version is not None, f"{requirement} is not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"constraints.txt pins {requirement.name}=={version}, outside {requirement}: "
            "run `make lock`")
