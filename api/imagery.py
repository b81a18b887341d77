"""Imagery routes: chip thumbnails and scene quicklooks (catalog.imagery).

- ``GET /collections/{cid}/items/{iid}/thumbnail.png``: the item's ``thumbnail`` asset.
- ``GET /collections/{cid}/quicklooks/{key}.png``: a ``quicklook-<key>`` asset of the
  collection (a source scene, Web Mercator, bounds in the asset's ``embcat:bbox``).

Both answer ``image/png`` with an ``ETag`` (the sha256 of the bytes; ``If-None-Match``
gets 304) and ``Cache-Control: max-age=3600`` (``private`` while reads need a key,
``public`` otherwise). Read keys and collection scopes apply as for the item:
``build_router`` declares the read-scope check of the path's collection on every route.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from embcat.api.db import connection
from embcat.api.features import FeatureContext
from embcat.catalog.imagery import PNG_MEDIA_TYPE, quicklook_png, thumbnail_png

MAX_AGE_S = 3600

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {PNG_MEDIA_TYPE: {}}},
    304: {"description": "Not modified"},
}


def _png(request: Request, data: bytes, digest: str) -> Response:
    etag = f'"{digest}"'
    scope = "private" if request.app.state.settings.require_read_key else "public"
    headers = {"ETag": etag, "Cache-Control": f"{scope}, max-age={MAX_AGE_S}"}
    match = request.headers.get("if-none-match")
    if match and etag in [m.strip() for m in match.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=PNG_MEDIA_TYPE, headers=headers)


async def get_thumbnail(request: Request, collection_id: str, item_id: str) -> Response:
    def work() -> bytes:
        with connection(request) as conn:
            return thumbnail_png(conn, collection_id, item_id)

    data = await run_in_threadpool(work)
    return _png(request, data, hashlib.sha256(data).hexdigest())


async def get_quicklook(request: Request, collection_id: str, key: str) -> Response:
    def work() -> tuple[bytes, str]:
        with connection(request) as conn:
            return quicklook_png(conn, collection_id, key)

    data, digest = await run_in_threadpool(work)
    return _png(request, data, digest)


def build_router(ctx: FeatureContext) -> APIRouter:
    """The imagery routes of one app (read scope)."""
    router = APIRouter(tags=["Imagery"], dependencies=[ctx.read()])
    router.add_api_route(
        "/collections/{collection_id}/items/{item_id}/thumbnail.png",
        get_thumbnail,
        methods=["GET"],
        summary="The item's thumbnail (a PNG of the chip, rendered at encode time)",
        response_class=Response,
        responses=PNG_RESPONSE,
    )
    router.add_api_route(
        "/collections/{collection_id}/quicklooks/{key}.png",
        get_quicklook,
        methods=["GET"],
        summary="A quicklook of one source scene of the collection (PNG, Web Mercator)",
        response_class=Response,
        responses=PNG_RESPONSE,
    )
    return router
