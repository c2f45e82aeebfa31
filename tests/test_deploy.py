"""The Dockerfiles and compose.yaml agree with the code they package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.demo import CACHE_DIR_ENV
from server.app import create_app
from server.cli import ENV_PREFIX, build_parser
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ["Dockerfile.x86", "Dockerfile.jetson"]


def instructions(dockerfile: str, keyword: str) -> list[str]:
    """Arguments of every ``keyword`` instruction in the final stage (continuations joined)."""
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    final_stage = re.split(r"^FROM .*$", text, flags=re.MULTILINE)[-1]
    pattern = rf"^{keyword}\s+(.*)$"
    return [m.strip() for m in re.findall(pattern, final_stage, flags=re.MULTILINE)]


def serve_options() -> dict[str, object]:
    """serve's options as their environment variables, with their defaults."""
    defaults = vars(build_parser().parse_args(["serve"]))
    return {ENV_PREFIX + k.upper(): v for k, v in defaults.items() if k not in ("command", "func")}


def variables_read_by_edgechat() -> set[str]:
    return set(serve_options()) | {CACHE_DIR_ENV}


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_entrypoint_is_the_serve_command(dockerfile):
    (entrypoint,) = instructions(dockerfile, "ENTRYPOINT")
    argv = json.loads(entrypoint)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'{argv[0]} = "server.cli:main"' in pyproject
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.host == "0.0.0.0"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_exposed_port_is_the_servers_port(dockerfile):
    (exposed,) = instructions(dockerfile, "EXPOSE")
    env = dict(re.findall(r"(EDGECHAT_\w+)=(\S+)", " ".join(instructions(dockerfile, "ENV"))))
    port = int(env.get("EDGECHAT_PORT", serve_options()["EDGECHAT_PORT"]))
    assert int(exposed) == port == serve_options()["EDGECHAT_PORT"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_healthcheck_asks_the_health_route(dockerfile):
    (healthcheck,) = instructions(dockerfile, "HEALTHCHECK")
    paths = {route.path for route in create_app(ServerSettings(), lambda: None).routes}
    assert "/health" in paths and "/health'" in healthcheck


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runs_as_a_user_that_is_not_root(dockerfile):
    (user,) = instructions(dockerfile, "USER")
    assert user.split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_edgechat_variable_set_is_read(dockerfile):
    env_lines = " ".join(instructions(dockerfile, "ENV"))
    names = set(re.findall(r"\b(EDGECHAT_\w+)=", env_lines))
    assert names and names <= variables_read_by_edgechat()


def test_compose_agrees_with_the_images():
    compose = (ROOT / "compose.yaml").read_text()
    names = set(re.findall(r"\b(EDGECHAT_\w+):", compose))
    assert names and names <= variables_read_by_edgechat()
    assert '"8000:8000"' in compose and "/health" in compose
    for dockerfile in DOCKERFILES:
        assert f"dockerfile: {dockerfile}" in compose
