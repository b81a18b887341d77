"""Run the real API under uvicorn on a free 127.0.0.1 port in a background thread.

    from helpers_server import running_server   # tests/ is on sys.path under pytest
    with running_server(ApiSettings(database_url=url)) as base_url:
        httpx.get(base_url + "/")

``start_server``/``ServerHandle.stop`` are there for fixtures that manage the lifetime
themselves. The server runs the app's lifespan (pool opened and closed).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn


@dataclass
class ServerHandle:
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():  # pragma: no cover - only when a request hangs
            self.server.force_exit = True
            self.thread.join(timeout)


def start_server(settings: Any = None, app: Any = None, timeout: float = 20.0) -> ServerHandle:
    """Start ``app`` (default: ``create_app(settings)``) and wait until it accepts requests."""
    if app is None:
        from embcat.api.app import create_app

        app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    return ServerHandle(f"http://127.0.0.1:{port}", server, thread)


@contextmanager
def running_server(settings: Any = None, app: Any = None) -> Iterator[str]:
    handle = start_server(settings, app)
    try:
        yield handle.base_url
    finally:
        handle.stop()
