"""The bytes behind an image URL that is not inline: http(s) fetched with a deadline and
a byte limit, ``file:`` read from one allowed local directory only.

A server fetches URLs its clients name, so by default it refuses hosts that resolve to
loopback, private, link-local, multicast or unspecified addresses (it would otherwise
let anyone who can reach it probe the network it sits in). Each hop of a redirect is
checked again, and the connection goes to the very address that was checked, so a name
that resolves differently a moment later (DNS rebinding) gains nothing. Failures all
read alike to the client ("cannot fetch"): whether a host or a port exists is not told;
the log has the cause.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

from engine.errors import InvalidRequestError

MAX_REDIRECTS = 3
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
CHUNK_BYTES = 64 * 1024

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaURLPolicy:
    """Which http(s) image URLs may be fetched. ``allow_http`` False: none (data: URLs
    only). ``allowed_domains``: only these hosts (exact names; empty: any host).
    ``allow_private``: also hosts on loopback, private, link-local, multicast or
    unspecified addresses (a camera on the LAN)."""

    allow_http: bool = True
    allowed_domains: tuple[str, ...] = ()
    allow_private: bool = False


class FetchFailed(Exception):
    """Why a fetch failed, for the log; the client hears only that it did."""


def fetch_http(
    url: str,
    max_bytes: int,
    timeout: float,
    policy: MediaURLPolicy = MediaURLPolicy(),
    media: str = "image",
) -> bytes:
    """The body of ``url`` after at most ``MAX_REDIRECTS`` redirects. ``timeout`` bounds
    the whole fetch (resolving, connecting, redirects, reading), not each read.
    ``media`` ("image", "video") names what is fetched in the errors."""
    if not policy.allow_http:
        raise InvalidRequestError(
            f"http(s) {media} URLs are refused on this server; send the {media} as a data: URL"
        )
    deadline = time.monotonic() + timeout
    first = url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            status, location, body = _get(url, max_bytes, deadline, policy, media)
            if status not in REDIRECT_STATUSES:
                return body
            if location is None:
                raise FetchFailed("a redirect without a Location")
            url = urljoin(url, location)
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        cause: object = f"timed out after {timeout:g} s"
    except (FetchFailed, OSError, http.client.HTTPException) as e:
        cause = e
    logger.info("cannot fetch %s %s (at %s): %s", media, _short(first), _short(url), cause)
    raise InvalidRequestError(
        f"cannot fetch {media} {_short(first)}: refused, unreachable, too slow, or not "
        f"answered with {with_article(media)}"
    ) from None


def _get(
    url: str, max_bytes: int, deadline: float, policy: MediaURLPolicy, media: str
) -> tuple[int, str | None, bytes]:
    """(status, Location, body) of one GET; raises on statuses >= 400 (but redirects)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchFailed(f"not an http(s) URL: {_short(url)}")
    host = parts.hostname
    if policy.allowed_domains and host not in policy.allowed_domains:
        raise FetchFailed(f"the host {host!r} is not among the allowed media domains")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _resolve(host, port, policy, deadline)
    connection_class = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    connection = connection_class(host, port, timeout=_left(deadline))
    connection.address = address
    try:
        connection.connect()
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
            raise FetchFailed(f"HTTP {response.status} {response.reason}")
        # Content-Length refuses early; the count below holds when it lies or is absent.
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise too_large(max_bytes, media)
        chunks, num_bytes = [], 0
        while True:
            sock.settimeout(_left(deadline))
            chunk = response.read1(CHUNK_BYTES)
            if not chunk:
                return response.status, None, b"".join(chunks)
            num_bytes += len(chunk)
            if num_bytes > max_bytes:
                raise too_large(max_bytes, media)
            chunks.append(chunk)
    finally:
        connection.close()


def _resolve(host: str, port: int, policy: MediaURLPolicy, deadline: float) -> str:
    """The address to connect to: the first ``host`` resolves to, every one of them
    checked (one bad address in the answer refuses the host)."""
    addresses = _lookup(host, port, deadline)
    if not policy.allow_private:
        for address in addresses:
            if is_internal(ipaddress.ip_address(address)):
                raise FetchFailed(f"{host!r} resolves to the internal address {address}")
    return addresses[0]


def _lookup(host: str, port: int, deadline: float) -> list[str]:
    """The addresses of ``host``, or TimeoutError at the deadline. getaddrinfo takes no
    timeout, so it runs in a thread of its own: a resolver that never answers holds that
    (daemon) thread until the resolver gives up, not the fetch."""
    answer: list = []
    done = threading.Event()

    def look_up() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            answer.append(e)
        done.set()

    threading.Thread(target=look_up, name="edgechat-dns", daemon=True).start()
    if not done.wait(_left(deadline)):
        raise TimeoutError(f"resolving {host!r} took too long")
    if isinstance(answer[0], OSError):
        raise answer[0]
    return [info[4][0] for info in answer[0]]


def is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local, multicast, unspecified (or reserved): an address
    of the server's own networks rather than the internet's."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to ``address`` (already checked) while naming the host in the request."""

    address = ""

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """As _PinnedHTTP, with the certificate checked against the host's name."""

    address = ""

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def read_local_file(
    url: str, media_dir: Path | None, max_bytes: int, media: str = "image"
) -> bytes:
    """The file of a ``file:`` URL whose real path (symlinks and ``..`` resolved) lies
    inside ``media_dir``; without ``media_dir`` every ``file:`` URL is refused."""
    if media_dir is None:
        raise InvalidRequestError(
            f"file: {media} URLs are refused (the server allows no local media directory); "
            "send a data: or http(s) URL"
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidRequestError(f"file: {media} URLs must name a local path, not {_short(url)}")
    path = Path(os.path.realpath(url2pathname(unquote(parts.path))))
    if not path.is_relative_to(Path(os.path.realpath(media_dir))):
        raise InvalidRequestError(f"{media} {_short(url)} is outside the allowed media directory")
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise InvalidRequestError(f"cannot read {media} {_short(url)}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise too_large(max_bytes, media)
    return data


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def too_large(max_bytes: int, media: str) -> InvalidRequestError:
    """The error for ``media`` ("image", "video") over its limit, naming the serve flag."""
    limit = f"the limit of {max_bytes} bytes (--max-{media}-bytes)"
    return InvalidRequestError(f"{with_article(media)} is larger than {limit}")


def with_article(media: str) -> str:
    """ "an image", "a video"."""
    return f"an {media}" if media[0] in "aeiou" else f"a {media}"


def _short(url: str) -> str:
    return repr(url if len(url) <= 100 else url[:100] + "...")
