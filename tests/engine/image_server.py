"""A tiny HTTP server on 127.0.0.1 (a free port, a background thread) serving an image
and the ways fetching one goes wrong; a redirecting server; a port nothing listens on,
and one that records whether anything connected."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Far longer than any fetch timeout the tests use, so /slow always times out, and a
# fetch that stops at its timeout is told apart from one that waits for the end even on
# a loaded machine.
SLOW_SECONDS = 30.0
HUGE_BYTES = 1 << 20


def closed_port() -> int:
    """A port on 127.0.0.1 that refuses connections (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def image_server(image: bytes) -> Iterator[str]:
    """Serves ``image`` at ``/image.png``; yields the base URL. Other paths: ``/redirect``
    (to /image.png), ``/loop`` (to itself), ``/missing`` (404), ``/not-an-image``,
    ``/slow`` (a byte every 0.1 s for ``SLOW_SECONDS``: each read is quick, the whole is
    not) and ``/huge`` (``HUGE_BYTES`` without a Content-Length)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # The client may stop reading (a timeout, too many bytes) and hang up.
            with contextlib.suppress(ConnectionError):
                self._serve()

        def _serve(self) -> None:
            if self.path == "/image.png":
                self._send(200, image, "image/png")
            elif self.path == "/not-an-image":
                self._send(200, b"plain text, not an image", "text/plain")
            elif self.path in ("/redirect", "/loop"):
                self.send_response(302)
                self.send_header("Location", "/image.png" if self.path == "/redirect" else "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path in ("/slow", "/huge"):
                # HTTP/1.0 without a Content-Length: the body ends when the connection does.
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                if self.path == "/huge":
                    self.wfile.write(b"\0" * HUGE_BYTES)
                    return
                deadline = time.monotonic() + SLOW_SECONDS
                while time.monotonic() < deadline:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output clean

    with serving(Handler) as base_url:
        yield base_url


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` on a free 127.0.0.1 port in a background thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # NOTE: daemon handler threads, so closing does not wait for /slow to finish.
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def trap(host: str = "127.0.0.1") -> Iterator[tuple[str, Callable[[], bool]]]:
    """A listening socket on ``host`` that is never served: yields its URL and a check
    of whether any connection reached it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        sock.listen(8)
        sock.setblocking(False)

        def reached() -> bool:
            try:
                sock.accept()[0].close()
            except BlockingIOError:
                return False
            return True

        yield f"http://{host}:{sock.getsockname()[1]}/cat.png", reached


@contextmanager
def redirecting_to(target: str) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every GET with a redirect to ``target``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serving(Handler) as base_url:
        yield f"{base_url}/start"
