"""The change feed and the space of a collection.

- ``GET /collections/{cid}/changes?since=&limit=``: the change feed (catalog.changes).
- ``GET /collections/{cid}/space``: the collection's embedding space.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from embcat.api.db import base_url as request_base_url
from embcat.api.db import connection
from embcat.api.features import FeatureContext
from embcat.catalog.changes import changes_since
from embcat.catalog.errors import NotFound
from embcat.catalog.store.spaces import collection_space

CHANGES_PATH = "/collections/{collection_id}/changes"
SPACE_PATH = "/collections/{collection_id}/space"


async def get_changes(
    request: Request,
    collection_id: str,
    since: Annotated[int, Query(ge=0, description="cursor from a previous page (0: all)")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> JSONResponse:
    def run() -> dict[str, Any]:
        with connection(request) as conn:
            return changes_since(conn, collection_id, since, limit).as_dict()

    page = await run_in_threadpool(run)
    base = request_base_url(request)
    href = f"{base}/collections/{quote(collection_id, safe='')}/changes"
    page["links"] = [
        {"rel": "self", "href": f"{href}?{urlencode({'since': since, 'limit': limit})}"},
        {
            "rel": "next",
            "href": f"{href}?{urlencode({'since': page['next'], 'limit': limit})}",
        },
    ]
    return JSONResponse(page)


async def get_space_of(request: Request, collection_id: str) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with connection(request) as conn:
            space = collection_space(conn, collection_id)
            if space is None:
                raise NotFound(f"collection {collection_id!r} has no embeddings yet")
            return {
                **space.identity(),
                "options_sha256": space.options_sha256,
                "options": space.options,
                "mlm": space.mlm,
            }

    return await run_in_threadpool(run)


def build_router(ctx: FeatureContext) -> APIRouter:
    """The change feed and space routes of one app (read scope)."""
    router = APIRouter(tags=["Exchange"], dependencies=[ctx.read()])
    router.add_api_route(
        CHANGES_PATH,
        get_changes,
        methods=["GET"],
        summary="Items added, updated and deleted since a cursor",
    )
    router.add_api_route(
        SPACE_PATH, get_space_of, methods=["GET"], summary="The collection's embedding space"
    )
    return router
