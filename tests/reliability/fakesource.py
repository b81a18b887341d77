"""A hostile mirror source on 127.0.0.1 for the mirror's reliability tests.

``FakeSource(upstream, route)`` answers every request with ``route(req)`` when that returns
an ``Answer``, and otherwise forwards it to the real embcat server at ``upstream`` (with
its own Host header, so that the links the upstream writes name the fake). An ``Answer``
body that is an iterable of bytes is sent chunked, as long as it yields (endless bodies,
slow bodies, truncated files). Every request is recorded in ``seen`` (method, path,
headers) so that tests can check which host received credentials.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

HOP = {"transfer-encoding", "content-length", "connection", "content-encoding", "keep-alive"}


@dataclass
class Req:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""


class FakeSource:
    def __init__(
        self, upstream: str | None = None, route: Callable[[Req], Answer | None] | None = None
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.route = route or (lambda req: None)
        self.seen: list[Req] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def forward(self, req: Req) -> Answer:
        """What the upstream answers to ``req`` (body read in full)."""
        assert self.upstream is not None, "no upstream to forward to"
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP | {"host"}}
        headers["host"] = self.base_url.removeprefix("http://")
        r = httpx.request(
            req.method, self.upstream + req.path, headers=headers, content=req.body, timeout=60
        )
        out = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
        return Answer(r.status_code, out, r.content)

    def start(self) -> FakeSource:
        source = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Req(self.command, self.path, {k: v for k, v in self.headers.items()}, body)
                source.seen.append(req)
                answer = source.route(req)
                if answer is None:
                    answer = source.forward(req)
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                try:
                    if isinstance(answer.body, bytes | bytearray):
                        self.send_header("Content-Length", str(len(answer.body)))
                        self.end_headers()
                        self.wfile.write(answer.body)
                        return
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in answer.body:
                        if chunk:
                            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                            self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
