"""Running the app with uvicorn: in the foreground (`tercet serve`) or on a background thread."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back with `getsockname`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: uvicorn sets TCP_NODELAY only on sockets that say so, and
    # without it back-to-back small responses wait on delayed ACKs (~40 ms each).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(app: ASGIApp, log_level: str = "info") -> uvicorn.Server:
    # httptools, not h11: a request body is parsed in C, which halves the CPU a large upload
    # costs the event loop (bench/files.py).
    config = uvicorn.Config(app, http="httptools", log_level=log_level, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


class BackgroundServer:
    """Serves an ASGI app (tercet's, or another a test needs) on a free loopback port from a
    daemon thread; a context manager."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", log_level: str = "warning") -> None:
        self._sock = bind(host, 0)
        self.base_url = url_of(self._sock)
        self._server = uvicorn_server(app, log_level)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
