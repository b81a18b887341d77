"""Who the client is, and how much of the server it may hold.

- ``TrustedProxyHeaders``: ``Forwarded`` / ``X-Forwarded-*`` headers decide the links the
  API writes (host, scheme, prefix) and the client address; they are honoured only from
  the proxies named in ``EMBCAT_TRUSTED_PROXIES`` and removed from every other request
  (any client could otherwise point every link at another host: cache poisoning).
- ``ClientConcurrencyLimit``: at most ``EMBCAT_MAX_REQUESTS_PER_CLIENT`` requests of one
  client address in flight at once (a streamed export counts until its last byte); the
  next one is answered 429 with ``Retry-After`` at once, so that one client cannot take
  every database connection and worker from the others.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_body

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

    EXEMPT = ("/health",)

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
