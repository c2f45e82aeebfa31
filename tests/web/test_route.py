"""The page's route: what it serves, to whom, and ``--no-web-ui``; and the page's files
reach nothing outside the server."""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi.testclient import TestClient

from server.app import create_app
from server.cli import build_parser
from server.settings import ServerSettings
from server.web import MEDIA_TYPES

WEB_DIR = Path(__file__).resolve().parents[2] / "client" / "web"
VENDOR_DIR = WEB_DIR / "vendor"
# http(s)://..., protocol-relative //host..., and CSS @import / url() of anything remote.
EXTERNAL = re.compile(r"https?://|(?<![:\w/])//[\w.-]+\.[a-z]{2,}|@import\s+url\(")


def client(**settings) -> TestClient:
    # Not started, so the engine never loads: these routes do not need it.
    return TestClient(create_app(ServerSettings(**settings), load_engine=lambda: None))


def test_the_page_and_its_assets_are_served() -> None:
    http = client()
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/app.js">' in page.text
    for name in ("app.js", "api.js", "render.js", "images.js"):
        asset = http.get(f"/web/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith("text/javascript")
    assert http.get("/web/style.css").headers["content-type"].startswith("text/css")
    library = http.get("/web/vendor/markdown-it.min.js")
    assert library.status_code == 200
    assert library.headers["content-type"].startswith("text/javascript")
    theme = http.get("/web/vendor/highlight-github-dark.min.css")
    assert theme.headers["content-type"].startswith("text/css")


def test_only_the_page_files_are_served() -> None:
    http = client()
    for path in (
        "/web/__init__.py",
        "/web/index.html",
        "/web/..%2F..%2Fserver%2Fapp.py",
        "/web/vendor/refresh.sh",
        "/web/vendor/MANIFEST.txt",
        "/web/vendor/..%2Fapp.js",
    ):
        response = http.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_url"


def test_the_page_needs_no_key_but_the_api_does() -> None:
    http = client(api_key="sk-secret")
    assert http.get("/").status_code == 200
    assert http.get("/web/app.js").status_code == 200
    assert http.get("/v1/models").status_code == 401
    assert http.get("/web/nope.js").status_code == 401  # not a page file: not public


def test_no_web_ui_answers_404() -> None:
    assert build_parser().parse_args(["serve", "--no-web-ui"]).no_web_ui
    assert not build_parser().parse_args(["serve"]).no_web_ui
    response = client(web_ui=False).get("/")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_url" and error["type"] == "invalid_request_error"
    assert client(web_ui=False).get("/web/app.js").status_code == 404


def test_vendored_files_match_their_manifest() -> None:
    """Every vendored file is in vendor/MANIFEST.txt with its sha256 (as refresh.sh, the
    make web-vendor target, wrote it), and each package's licence ships beside it."""
    lines = (VENDOR_DIR / "MANIFEST.txt").read_text().splitlines()
    packages = [line.split() for line in lines[1:4]]
    names = ["markdown-it", "@highlightjs/cdn-assets", "swagger-ui-dist"]
    assert [name for name, _ in packages] == names
    sums = dict(reversed(line.split()) for line in lines[4:])
    on_disk = {p.name for p in VENDOR_DIR.iterdir()} - {"MANIFEST.txt", "refresh.sh"}
    assert set(sums) == on_disk
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR_DIR / name).read_bytes()).hexdigest() == digest, name
    licences = {"markdown-it.LICENSE.txt", "highlight.js.LICENSE.txt", "swagger-ui.LICENSE.txt"}
    assert licences <= on_disk


def test_page_files_have_no_external_urls() -> None:
    """The page's own files (the vendored libraries mention their homepages in
    comments; test_page.py checks that the page loads nothing from outside)."""
    names = [path.name for path in WEB_DIR.iterdir() if path.suffix in MEDIA_TYPES]
    assert {"index.html", "app.js", "style.css"} <= set(names)
    for name in names:
        text = (WEB_DIR / name).read_text()
        assert not EXTERNAL.search(text), f"{name}: {EXTERNAL.search(text).group()!r}"


def test_the_files_ship_as_package_data() -> None:
    """The page is found through importlib.resources (as from an installed wheel), and
    pyproject's package-data patterns cover every file kind the route serves."""
    shipped = {entry.name for entry in files("client.web").iterdir()}
    assert {"__init__.py", "index.html", "app.js", "style.css"} <= shipped
    vendored = {entry.name for entry in (files("client.web") / "vendor").iterdir()}
    assert {"markdown-it.min.js", "markdown-it.LICENSE.txt", "MANIFEST.txt"} <= vendored
    pyproject = (WEB_DIR.parents[1] / "pyproject.toml").read_text()
    for suffix in [*MEDIA_TYPES, ".txt"]:  # .txt: the licences and the manifest
        assert f'"*{suffix}"' in pyproject
