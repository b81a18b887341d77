"""Who the client is, and how much of the server it may hold.

- ``TrustedProxyHeaders``: ``Forwarded`` / ``X-Forwarded-*`` headers decide the links the
  API writes (host, scheme, prefix) and the client address; they are honoured only from
  the proxies named in ``EMBCAT_TRUSTED_PROXIES`` and removed from every other request
  (any client could otherwise point every link at another host: cache poisoning).
- ``ClientConcurrencyLimit``: at most ``EMBCAT_MAX_REQUESTS_PER_CLIENT`` requests of one
  client address in flight at once (a streamed export counts until its last byte); the
  next one is answered 429 with ``Retry-After`` at once, so that one client cannot take
  every database connection and worker from the others.
- ``ExpensiveRequestLimit``: many addresses together (issue 15, finding 11). Requests that
  cost much CPU or database time (bodies above ``EMBCAT_EXPENSIVE_BODY_BYTES``, exact
  similarity, scoring) share ``EMBCAT_MAX_EXPENSIVE_REQUESTS`` slots per process; past
  them the answer is 503 with ``Retry-After`` at once, decided from the request line and
  headers where they tell (nothing of the body is read or parsed). Cheap requests never
  wait for a slot. Search-like POST bodies (``/search``, ``/export``, ``/score``) above
  ``EMBCAT_MAX_SEARCH_BODY_BYTES`` get 413 before they are read; an admitted body must
  arrive within ``EMBCAT_REQUEST_BODY_TIMEOUT_S`` (408), so that slow senders cannot keep
  the slots; and its JSON is parsed and its ``intersects`` vertex count checked in a
  worker thread, so that a body over the vertex cap is refused without CPU work on the
  event loop.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterable
from typing import Any

import anyio
import orjson
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embcat.api.errors import error_body
from embcat.catalog.geometry import MAX_VERTICES, too_many_positions

FORWARDED_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-proto",
    }
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str | Iterable[str] | None) -> list[Network]:
    """``"10.0.0.1, 10.1.0.0/16"`` -> networks (ValueError names a bad entry)."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    out: list[Network] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {part!r}") from None
    return out


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def trusted(peer: str | None, networks: list[Network]) -> bool:
    if peer is None or not networks:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in networks)


def client_address(scope: Scope, networks: list[Network]) -> str:
    """The client's address: the peer, or the last untrusted hop of ``X-Forwarded-For``
    when the peer is a trusted proxy."""
    peer = _peer(scope) or "unknown"
    if not trusted(peer, networks):
        return peer
    for name, value in scope.get("headers") or []:
        if name == b"x-forwarded-for":
            hops = [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
            for hop in reversed(hops):
                if not trusted(hop, networks):
                    return hop
    return peer


class TrustedProxyHeaders:
    """Removes the forwarded headers of requests that do not come from a trusted proxy."""

    def __init__(self, app: ASGIApp, networks: list[Network]) -> None:
        self.app = app
        self.networks = networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not trusted(_peer(scope), self.networks):
            headers = scope.get("headers") or []
            if any(name in FORWARDED_HEADERS for name, _ in headers):
                scope = dict(scope)
                scope["headers"] = [(n, v) for n, v in headers if n not in FORWARDED_HEADERS]
        await self.app(scope, receive, send)


class ClientConcurrencyLimit:
    """429 for a client address past ``max_in_flight`` requests at once (0: no limit)."""

    # /health, and the explorer page's own files (no database work): a browser fetches
    # those in parallel, and a 429 for its CSS or script leaves the page unusable
    EXEMPT = ("/health", "/explorer/static/", "/explorer/vendor/")

    def __init__(self, app: ASGIApp, max_in_flight: int, networks: list[Network]) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.networks = networks
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.max_in_flight <= 0
            or str(scope.get("path", "")).startswith(self.EXEMPT)
        ):
            await self.app(scope, receive, send)
            return
        who = client_address(scope, self.networks)
        with self._lock:
            held = self._in_flight.get(who, 0)
            admitted = held < self.max_in_flight
            if admitted:
                self._in_flight[who] = held + 1
        if not admitted:
            response = JSONResponse(
                error_body(
                    "TooManyRequests",
                    f"more than {self.max_in_flight} requests of this client at once;"
                    " retry when one has finished",
                ),
                status_code=429,
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                left = self._in_flight.get(who, 1) - 1
                if left <= 0:
                    self._in_flight.pop(who, None)
                else:
                    self._in_flight[who] = left


# Search-like POSTs: they only read, and their bodies are queries (a few kB; a geometry at
# the vertex cap is a few hundred kB), never documents to store.
_SEARCH_POST = re.compile(r"(?:^|/)(?:search|collections/[^/]+/(?:export|score))$")
_SCORE = re.compile(r"/collections/[^/]+/score$")
_SIMILAR_GET = re.compile(r"/collections/[^/]+/items/[^/]+/similar$")
_EXACT_QUERY = re.compile(rb"(?:^|&)exact=(?:true|1|yes|on)(?:&|$)", re.IGNORECASE)
# ``"exact": true`` anywhere in a search body: a property named "exact" set to true makes a
# request count as expensive too (harmless: it may get a 503 under load, never a wrong answer).
_EXACT_BODY = re.compile(rb'"exact"\s*:\s*true')
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _json_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers or None)


def _over_vertex_cap(body: bytes) -> bool:
    """Whether a search body's ``intersects`` holds more than MAX_VERTICES positions (run in
    a worker thread; a body that does not parse is left to the app's own error)."""
    try:
        value: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and too_many_positions(value.get("intersects"))


class ExpensiveRequestLimit:
    """A per-process bound on expensive requests in flight (module docstring)."""

    # Upload chunks are file bytes written to the spool, never parsed, and need a write key
    # (their sizes and totals have their own caps: api/uploads.py).
    EXEMPT = ("/health", "/publish/uploads/")

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        expensive_body_bytes: int,
        max_search_body_bytes: int,
        body_timeout_s: float,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.expensive_body_bytes = expensive_body_bytes
        self.max_search_body_bytes = max_search_body_bytes
        self.body_timeout_s = body_timeout_s
        self.in_flight = 0
        self._lock = threading.Lock()

    def _acquire(self) -> bool:
        if self.max_in_flight <= 0:
            return True
        with self._lock:
            if self.in_flight >= self.max_in_flight:
                return False
            self.in_flight += 1
            return True

    def _release(self) -> None:
        if self.max_in_flight > 0:
            with self._lock:
                self.in_flight -= 1

    def _busy(self) -> JSONResponse:
        return _json_response(
            503,
            "ServerBusy",
            f"the server is serving {self.max_in_flight} expensive requests (large bodies,"
            " exact similarity, scoring) at once; retry shortly",
            **{"Retry-After": "1"},
        )

    def _expensive_by_head(
        self, scope: Scope, method: str, path: str, declared: int | None
    ) -> bool:
        if declared is not None and declared > self.expensive_body_bytes:
            return True
        if method == "POST" and _SCORE.search(path):
            return True
        return method == "GET" and bool(
            _SIMILAR_GET.search(path) and _EXACT_QUERY.search(scope.get("query_string", b""))
        )

    async def _read_body(self, receive: Receive, limit: int | None) -> bytes | Message:
        """The whole body, or the message that ends the request early: a disconnect, or a
        413 / 408 answer (a ``JSONResponse``) when the body passes ``limit`` or the time."""
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.body_timeout_s) as timer:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message  # http.disconnect
                chunk = message.get("body", b"")
                size += len(chunk)
                if limit is not None and size > limit:
                    return {"type": "embcat.too_large"}
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        assert timer.cancel_called
        return {"type": "embcat.timeout"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or path.startswith(self.EXEMPT):
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET")).upper()
        declared: int | None = None
        for name, value in scope.get("headers") or []:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
        search_post = method == "POST" and bool(_SEARCH_POST.search(path))
        too_large = _json_response(
            413, "PayloadTooLarge", f"query body larger than {self.max_search_body_bytes} bytes"
        )
        if search_post and declared is not None and declared > self.max_search_body_bytes:
            await too_large(scope, receive, send)  # refused before a byte of it is read
            return
        expensive = self._expensive_by_head(scope, method, path, declared)
        if expensive and not self._acquire():
            await self._busy()(scope, receive, send)
            return
        try:
            body: bytes | None = None
            if method in _BODY_METHODS and (search_post or expensive):
                got = await self._read_body(
                    receive, self.max_search_body_bytes if search_post else None
                )
                if not isinstance(got, bytes):
                    if got["type"] == "embcat.too_large":
                        await too_large(scope, receive, send)
                    elif got["type"] == "embcat.timeout":
                        await _json_response(
                            408,
                            "RequestTimeout",
                            f"the request body did not arrive within {self.body_timeout_s} s",
                        )(scope, receive, send)
                    return  # or the client went away
                body = got
                if not expensive and (
                    len(body) > self.expensive_body_bytes or _EXACT_BODY.search(body)
                ):
                    if not self._acquire():
                        await self._busy()(scope, receive, send)
                        return
                    expensive = True
                if search_post and expensive and await run_in_threadpool(_over_vertex_cap, body):
                    await _json_response(
                        400,
                        "InvalidInput",
                        f"intersects: geometry has more than {MAX_VERTICES} vertices",
                    )(scope, receive, send)
                    return
            await self.app(scope, receive if body is None else _replay(body, receive), send)
        finally:
            if expensive:
                self._release()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the real stream (which
    tells about a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
