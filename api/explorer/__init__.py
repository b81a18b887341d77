"""The explorer web page (``/explorer``) and the two endpoints it draws with.

- ``GET /explorer``: the page (Leaflet map, collection selector, similarity by click,
  few-shot search, item panel). Our own HTML/JS/CSS live in ``static/``; Leaflet is served
  from ``node_modules`` that ``scripts/setup-explorer.sh`` installs with ``npm ci`` from the
  committed lock file. Nothing is fetched from outside the server: the page works offline.
- ``GET /collections/{cid}/explorer/features?bbox=&limit=``: footprints as GeoJSON, each with
  its false colour (first three principal components of the collection's vectors -> RGB).
- ``GET /collections/{cid}/preview.png?bbox=&width=&height=``: the false-colour field of an
  area as a PNG (bbox defaults to the collection's extent).

The similarity search, item JSON, vector asset and export the page uses are the same API
endpoints that clients use.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from embcat.api.db import connection
from embcat.api.features import FeatureContext
from embcat.catalog import preview
from embcat.catalog.errors import NotFound, translated
from embcat.catalog.store.spaces import collection_space
from embcat.catalog.store.vectors import item_extent

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
NODE_MODULES = HERE / "node_modules"
LEAFLET_DIST = NODE_MODULES / "leaflet" / "dist"
STATIC_FILES = {"explorer.js", "explorer.css"}
VENDOR_SUFFIXES = {".js", ".css", ".png"}
GEOJSON = "application/geo+json"

SETUP_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>embcat explorer: set-up needed</title></head>
<body><h1>The explorer is not installed</h1>
<p>Its map library (Leaflet) is installed from the npm registry by the set-up and was not
found at <code>{path}</code>.</p>
<p>Run <code>make setup</code> (or <code>scripts/setup-explorer.sh</code>) and reload.</p>
</body></html>
"""


def leaflet_installed() -> bool:
    return (LEAFLET_DIST / "leaflet.js").is_file() and (LEAFLET_DIST / "leaflet.css").is_file()


async def explorer_page() -> Response:
    if not leaflet_installed():
        return HTMLResponse(SETUP_MISSING.format(path=LEAFLET_DIST), status_code=503)
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def explorer_static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise NotFound(f"no explorer file {name!r}")
    return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})


async def explorer_vendor(path: str) -> Response:
    """Leaflet's distribution files (JS, CSS, marker images) from the npm installation."""
    if "\x00" in path:  # os.path refuses NUL bytes (a ValueError, not a missing file)
        raise NotFound(f"no Leaflet file {path!r}")
    target = (LEAFLET_DIST / path).resolve()
    if (
        not target.is_relative_to(LEAFLET_DIST.resolve())
        or target.suffix not in VENDOR_SUFFIXES
        or not target.is_file()
    ):
        if not leaflet_installed():
            return HTMLResponse(SETUP_MISSING.format(path=LEAFLET_DIST), status_code=503)
        raise NotFound(f"no Leaflet file {path!r}")
    return FileResponse(target, headers={"Cache-Control": "public, max-age=86400"})


def _cache(request: Request) -> preview.FalseColourCache:
    cache = getattr(request.app.state, "false_colour_cache", None)
    if cache is None:
        cache = request.app.state.false_colour_cache = preview.FalseColourCache()
    return cache


def _colours(
    request: Request, conn: psycopg.Connection, collection_id: str, *, required: bool
) -> preview.FalseColour:
    with translated():
        space = collection_space(conn, collection_id)  # NotFound for an unknown collection
    if space is None:
        if required:
            raise NotFound(f"collection {collection_id!r} has no embeddings yet")
        return preview.FalseColour.empty(collection_id)
    return _cache(request).get(conn, collection_id)


async def explorer_features(
    request: Request,
    collection_id: str,
    bbox: str | None = Query(None, description="west,south,east,north (WGS84)"),
    limit: int = Query(10_000, description="Most footprints returned (1..100000)"),
) -> Response:
    box = preview.preview_area(bbox)

    def work() -> bytes:
        with connection(request) as conn:
            colours = _colours(request, conn, collection_id, required=False)
            return preview.features_json(conn, colours, bbox=box, limit=limit)

    return Response(await run_in_threadpool(work), media_type=GEOJSON)


async def preview_png(
    request: Request,
    collection_id: str,
    bbox: str | None = Query(None, description="west,south,east,north (default: extent)"),
    width: int | None = Query(None, description=f"pixels, 1..{preview.MAX_PNG_SIDE}"),
    height: int | None = Query(None, description=f"pixels, 1..{preview.MAX_PNG_SIDE}"),
) -> Response:
    box = preview.preview_area(bbox)

    def work() -> bytes:
        with connection(request) as conn:
            colours = _colours(request, conn, collection_id, required=True)
            area = box or _extent(conn, collection_id)
            return preview.render_png(conn, colours, area, width=width, height=height)

    return Response(await run_in_threadpool(work), media_type="image/png")


def build_router(ctx: FeatureContext) -> APIRouter:
    """The explorer's routes of one app: the page and its static files are public (no
    catalogue data); its two data routes need the read scope."""
    router = APIRouter(tags=["Explorer"])
    router.add_api_route(
        "/explorer",
        explorer_page,
        methods=["GET"],
        response_class=HTMLResponse,
        include_in_schema=False,
        dependencies=[ctx.public],
    )
    for path, endpoint in (
        ("/explorer/static/{name}", explorer_static),
        ("/explorer/vendor/leaflet/{path:path}", explorer_vendor),
    ):
        router.add_api_route(
            path, endpoint, methods=["GET"], include_in_schema=False, dependencies=[ctx.public]
        )
    router.add_api_route(
        "/collections/{collection_id}/explorer/features",
        explorer_features,
        methods=["GET"],
        dependencies=[ctx.read()],
        summary="Footprints coloured by the first three principal components of their vectors",
    )
    router.add_api_route(
        "/collections/{collection_id}/preview.png",
        preview_png,
        methods=["GET"],
        dependencies=[ctx.read()],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
        summary="The false-colour embedding field of an area as a PNG",
    )
    return router


def _extent(conn: psycopg.Connection, collection_id: str) -> tuple[float, float, float, float]:
    """The items' extent, widened by 2 % (and to a minimum size) so edge chips show whole."""
    west, south, east, north = item_extent(conn, collection_id)
    pad_x = max((east - west) * 0.02, 1e-4)
    pad_y = max((north - south) * 0.02, 1e-4)
    return (
        max(west - pad_x, -180.0),
        max(south - pad_y, -90.0),
        min(east + pad_x, 180.0),
        min(north + pad_y, 90.0),
    )
