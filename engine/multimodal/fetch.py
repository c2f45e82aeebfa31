"""The bytes behind an image URL that is not inline: http(s) fetched with a deadline and
a byte limit, ``file:`` read from one allowed local directory only."""

from __future__ import annotations

import http.client
import os
import time
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

from engine.errors import InvalidRequestError

MAX_REDIRECTS = 3
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
CHUNK_BYTES = 64 * 1024


def fetch_http(url: str, max_bytes: int, timeout: float) -> bytes:
    """The body of ``url`` after at most ``MAX_REDIRECTS`` redirects. ``timeout`` bounds
    the whole fetch (connecting, redirects, reading), not each read."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        try:
            status, location, body = _get(url, max_bytes, deadline)
        except TimeoutError:
            raise InvalidRequestError(
                f"fetching image {_short(url)} timed out after {timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise InvalidRequestError(f"cannot fetch image {_short(url)}: {e}") from None
        if status not in REDIRECT_STATUSES:
            return body
        if location is None:
            raise InvalidRequestError(f"image {_short(url)} redirects without a Location")
        url = urljoin(url, location)
        if urlsplit(url).scheme not in ("http", "https"):
            raise InvalidRequestError(f"image URL redirects to a non-http(s) URL {_short(url)}")
    raise InvalidRequestError(f"image {_short(url)} redirects more than {MAX_REDIRECTS} times")


def _get(url: str, max_bytes: int, deadline: float) -> tuple[int, str | None, bytes]:
    """(status, Location, body) of one GET; raises on statuses >= 400 (but redirects)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(f"bad image URL {_short(url)}")
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.hostname, parts.port, timeout=_left(deadline))
    try:
        try:
            connection.connect()
        except TimeoutError:
            raise  # fetch_http names the timeout
        except OSError as e:
            raise InvalidRequestError(
                f"cannot reach the host of image {_short(url)}: {e.strerror or e}"
            ) from None
        # NOTE: the socket's timeout bounds each blocking call; resetting it to the time
        # left before each one makes the deadline hold for the whole fetch.
        sock = connection.sock
        path = parts.path or "/"
        connection.request("GET", f"{path}?{parts.query}" if parts.query else path)
        sock.settimeout(_left(deadline))
        response = connection.getresponse()
        if response.status in REDIRECT_STATUSES:
            return response.status, response.getheader("Location"), b""
        if response.status >= 400:
            raise InvalidRequestError(
                f"fetching image {_short(url)} failed: HTTP {response.status} {response.reason}"
            )
        # Content-Length refuses early; the count below holds when it lies or is absent.
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise _too_large(max_bytes)
        chunks, num_bytes = [], 0
        while True:
            sock.settimeout(_left(deadline))
            chunk = response.read1(CHUNK_BYTES)
            if not chunk:
                return response.status, None, b"".join(chunks)
            num_bytes += len(chunk)
            if num_bytes > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    finally:
        connection.close()


def read_local_file(url: str, media_dir: Path | None, max_bytes: int) -> bytes:
    """The file of a ``file:`` URL whose real path (symlinks and ``..`` resolved) lies
    inside ``media_dir``; without ``media_dir`` every ``file:`` URL is refused."""
    if media_dir is None:
        raise InvalidRequestError(
            "file: image URLs are refused (the server allows no local media directory); "
            "send a data: or http(s) URL"
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidRequestError(f"file: image URLs must name a local path, not {_short(url)}")
    path = Path(os.path.realpath(url2pathname(unquote(parts.path))))
    if not path.is_relative_to(Path(os.path.realpath(media_dir))):
        raise InvalidRequestError(f"image {_short(url)} is outside the allowed media directory")
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise InvalidRequestError(f"cannot read image {_short(url)}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _too_large(max_bytes: int) -> InvalidRequestError:
    return InvalidRequestError(f"an image is larger than the limit of {max_bytes} bytes")


def _short(url: str) -> str:
    return repr(url if len(url) <= 100 else url[:100] + "...")
