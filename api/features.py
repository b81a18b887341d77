"""How a feature adds routes to the API: one mechanism.

A feature module (exchange, uploads, explorer, imagery, score) exposes
``build_router(ctx: FeatureContext) -> APIRouter``. ``create_app`` calls every builder of
``api.app.FEATURES`` with the app's context when it builds the app; the builder declares
each route's scope check as a FastAPI dependency taken from the context (``ctx.read()``,
``ctx.write()``, or ``ctx.public`` for the few routes that show no catalogue data). Nothing
is patched into routes afterwards, and nothing (routers, locks, caches) lives at module
level to be shared between app instances.

The STAC routes that stac-fastapi registers itself (core, transactions, the similarity
extension) get their checks through stac-fastapi's own ``route_dependencies`` argument,
declared in ``STAC_READS`` / ``STAC_WRITES`` below.

``unprotected_routes(app)`` lists every route without a scope check or the public marker;
``create_app`` refuses to build an app that has one, so a route added without a scope
dependency is caught when the app is built (and by tests/api/test_route_protection.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute

from embcat.api.auth import require_scope, scope_of

if TYPE_CHECKING:
    from embcat.api.settings import AppSettings

# Routes that stac-fastapi adds for itself (liveness) and that carry no catalogue data.
OPEN_PATHS = ("/_mgmt/",)


async def public() -> None:
    """The marker of a route that anyone may call (it shows no catalogue data)."""


@dataclass(frozen=True)
class FeatureContext:
    """What a feature's router builder gets from the app factory."""

    settings: AppSettings
    public: DependsParam = Depends(public)  # noqa: RUF009 - an immutable marker

    def read(self, *, any_collection: bool = False) -> DependsParam:
        """The read-scope check (a no-op unless keys are required for reads or presented).

        On a path without ``{collection_id}`` a key limited to one collection is refused,
        unless ``any_collection``: then the handler narrows the request to that key's
        collection (``api.auth.scoped_collections``) or checks what it touches."""
        return Depends(require_scope("read", any_collection=any_collection))

    def write(self, *, any_collection: bool = False) -> DependsParam:
        """The write-scope check (every route that changes the catalogue)."""
        return Depends(require_scope("write", any_collection=any_collection))


# The routes stac-fastapi registers (core STAC API, transactions, similarity): declared
# here, passed to StacApi(route_dependencies=...). (path, method); reads without a
# collection in the path that a key limited to one collection may make are narrowed to it.
STAC_READS_ANY_COLLECTION = (("/", "GET"), ("/collections", "GET"), ("/search", "GET"))
STAC_READS = (
    ("/conformance", "GET"),
    ("/queryables", "GET"),
    ("/sortables", "GET"),
    ("/collections-sortables", "GET"),
    ("/collections/{collection_id}", "GET"),
    ("/collections/{collection_id}/queryables", "GET"),
    ("/collections/{collection_id}/sortables", "GET"),
    ("/collections/{collection_id}/items", "GET"),
    ("/collections/{collection_id}/items/{item_id}", "GET"),
    ("/collections/{collection_id}/items/{item_id}/similar", "GET"),
)
# POST /search only reads (a search body).
STAC_READ_POSTS_ANY_COLLECTION = (("/search", "POST"),)
STAC_WRITES = (
    ("/collections", "POST"),
    ("/collections/{collection_id}", "PUT"),
    ("/collections/{collection_id}", "PATCH"),
    ("/collections/{collection_id}", "DELETE"),
    ("/collections/{collection_id}/items", "POST"),
    ("/collections/{collection_id}/bulk_items", "POST"),
    ("/collections/{collection_id}/items/{item_id}", "PUT"),
    ("/collections/{collection_id}/items/{item_id}", "PATCH"),
    ("/collections/{collection_id}/items/{item_id}", "DELETE"),
)


def stac_route_dependencies(ctx: FeatureContext) -> list[tuple[list[Any], list[DependsParam]]]:
    """The scope checks of stac-fastapi's routes, for ``StacApi(route_dependencies=...)``."""

    def scopes(pairs: tuple[tuple[str, str], ...]) -> list[Any]:
        return [{"path": path, "method": method} for path, method in pairs]

    return [
        (
            scopes(STAC_READS_ANY_COLLECTION + STAC_READ_POSTS_ANY_COLLECTION),
            [ctx.read(any_collection=True)],
        ),
        (scopes(STAC_READS), [ctx.read()]),
        (scopes(STAC_WRITES), [ctx.write()]),
    ]


def _effective_routes(routes: list[Any]) -> Iterator[Any]:
    """Every endpoint route with its effective dependant, also inside included routers
    (FastAPI >= 0.16x keeps them nested and combines the include's dependencies lazily;
    older versions copy the routes into the app)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "effective_candidates"):
            yield from _effective_routes(route.effective_candidates())
        elif getattr(route, "dependant", None) is not None and getattr(route, "methods", None):
            yield route  # an effective route of an included router
        elif getattr(route, "routes", None):
            yield from _effective_routes(route.routes)


def route_checks(route: Any) -> list[Any]:
    """The scope checks (and the public marker) a route runs, in order."""
    return [
        d.call
        for d in route.dependant.dependencies
        if d.call is public or scope_of(d.call) is not None
    ]


def unprotected_routes(app: Any) -> list[str]:
    """``"METHOD path"`` of every route that has neither a scope check nor the public
    marker (library routes under ``OPEN_PATHS`` aside)."""
    missing: list[str] = []
    for route in _effective_routes(app.router.routes):
        if route.path.startswith(OPEN_PATHS) or route_checks(route):
            continue
        missing.extend(f"{method} {route.path}" for method in sorted(route.methods))
    return missing


def check_protected(app: Any) -> None:
    """RuntimeError naming the routes added without a scope dependency."""
    missing = unprotected_routes(app)
    if missing:
        raise RuntimeError(
            f"routes without a scope check (declare ctx.read(), ctx.write() or ctx.public):"
            f" {missing}"
        )
