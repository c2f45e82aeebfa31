"""The web chat page (client/web/) at ``/``, its assets under ``/web/``."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import Response

from server.errors import APIError

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    # Browsers refuse ES modules served under any other type.
    ".js": "text/javascript; charset=utf-8",
}


def web_assets() -> dict[str, tuple[bytes, str]]:
    """URL path -> (content, media type) for every page file. Read once, through
    importlib.resources, so an installed wheel finds them as a checkout does; only
    these exact paths are served, so no request can reach another file."""
    assets = {}
    page = files("client.web")
    # vendor/: the libraries the page imports (client/web/vendor/refresh.sh).
    for folder, prefix in ((page, "/web/"), (page / "vendor", "/web/vendor/")):
        for entry in folder.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in MEDIA_TYPES:
                assets[f"{prefix}{entry.name}"] = (entry.read_bytes(), MEDIA_TYPES[suffix])
    assets["/"] = assets.pop("/web/index.html")
    return assets


def mount_web_ui(app: FastAPI) -> frozenset[str]:
    """Serve the page from ``app``; returns its paths, which need no API key (a browser
    cannot send one to load a page: the page asks the user for it)."""
    assets = web_assets()

    async def asset(request: Request) -> Response:
        found = assets.get(request.url.path)
        if found is None:
            return APIError(404, f"no such file: {request.url.path}", code="unknown_url").response()
        content, media_type = found
        # no-cache: revalidate, so a browser never mixes an old page with a new server.
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})

    app.add_api_route("/", asset, methods=["GET"])
    app.add_api_route("/web/{name}", asset, methods=["GET"])
    app.add_api_route("/web/vendor/{name}", asset, methods=["GET"])
    return frozenset(assets)
