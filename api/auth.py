"""API-key authentication: ``require_scope(scope)`` as a FastAPI dependency.

The key comes from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Without a
valid key the request gets 401; with a key that lacks the scope (or is limited to another
collection than the path's ``collection_id``) it gets 403.

Reads by a key limited to one collection (when ``EMBCAT_REQUIRE_READ_KEY`` is on): every
collection a request names, in the path, the query or the body (search ``collections``,
similarity ``collections`` and example items, ...), must be the key's, else 403; a search
or collection list that names none sees the key's collection only (``read_limit``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from embcat.api.db import connection
from embcat.catalog.errors import Forbidden, Unauthorized
from embcat.catalog.keys import ANONYMOUS, Principal, verify


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def _verify(request: Request, key: str) -> Principal:
    with connection(request) as conn:
        return verify(conn, key)


async def principal_of(request: Request) -> Principal | None:
    """The request's principal, or None when no key was presented."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    key = presented_key(request)
    if key is None:
        return None
    principal = await run_in_threadpool(_verify, request, key)
    request.state.principal = principal
    return principal


def require_scope(
    scope: str, *, any_collection: bool = False
) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that returns the Principal allowed ``scope`` (on the path's collection).

    On a path without ``{collection_id}`` a key limited to one collection is refused, unless
    ``any_collection``: then it passes here and the handler checks the collection it
    touches (routers that do their own per-collection checks, e.g. uploads at commit)."""

    async def dependency(request: Request) -> Principal:
        if scope == "read" and not request.app.state.settings.require_read_key:
            return ANONYMOUS  # open reads: no key needed, none checked
        principal = await principal_of(request)
        if principal is None:
            raise Unauthorized(f"this operation needs an API key with the {scope!r} scope")
        collection_id = request.path_params.get("collection_id")
        if collection_id is None and any_collection:
            collection_id = principal.collection_id
        if not principal.allows(scope, collection_id):
            where = f" on collection {collection_id!r}" if collection_id else ""
            raise Forbidden(f"the API key {principal.key_id} lacks the {scope!r} scope{where}")
        return principal

    dependency.__name__ = f"require_{scope}"
    setattr(dependency, _SCOPE, (scope, any_collection))
    return dependency


_SCOPE = "__embcat_scope__"


def scope_of(dependency: object) -> tuple[str, bool] | None:
    """(scope, any_collection) of a dependency made by ``require_scope``; None otherwise."""
    return getattr(dependency, _SCOPE, None)


def read_limit(request: Request) -> str | None:
    """The one collection the request's key may read (None: no limit). Only keys limited
    to a collection have one, and only while reads need keys (open reads show everything
    to everyone, so a key adds nothing to hide)."""
    if not request.app.state.settings.require_read_key:
        return None
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal.collection_id if principal is not None else None


def check_read_collections(request: Request, collections: Iterable[str | None]) -> None:
    """Forbidden unless the request's key may read every collection named."""
    limit = read_limit(request)
    if limit is None:
        return
    others = sorted({str(c) for c in collections if c is not None and c != limit})
    if others:
        principal: Principal = request.state.principal
        raise Forbidden(
            f"the API key {principal.key_id} may read collection {limit!r} only, not {others}"
        )


def scoped_collections(request: Request, collections: list[str] | None) -> list[str] | None:
    """The collections a search may look at: those named (each checked), or the key's own
    when it names none (None: every collection)."""
    limit = read_limit(request)
    if limit is None:
        return collections
    if not collections:
        return [limit]
    check_read_collections(request, collections)
    return collections
