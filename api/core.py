"""The STAC API core client: landing page, collections, items, item search, queryables.

The client is async (stac-fastapi awaits it); database work runs in the thread pool on
sync psycopg connections from ``api.db``. All SQL lives in catalog/ (search.py, stac.py).
Item search's request side and documents are ``api.core_search``; collection search is
``api.core_collections``; the queryables and sortables clients are ``api.queryables``.
"""

from __future__ import annotations

from typing import Any

import attr
from fastapi import Request
from stac_fastapi.types.core import AsyncBaseCoreClient
from starlette.concurrency import run_in_threadpool

from embcat.api.auth import read_limit, scoped_collections
from embcat.api.core_collections import collections_page
from embcat.api.core_search import (
    GEOJSON,
    JSON,
    get_page_links,
    get_query,
    item_collection,
    post_query,
    run_search,
)
from embcat.api.db import base_url as request_base_url
from embcat.api.db import connection
from embcat.api.responses import GeoJSONDocument
from embcat.catalog import stac as stacrows
from embcat.catalog.search import SearchPage, check_depth
from embcat.catalog.search_links import page_links


@attr.s
class CoreClient(AsyncBaseCoreClient):
    """stac-fastapi core client over the embcat catalogue."""

    async def landing_page(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        request: Request = kwargs["request"]
        page: dict[str, Any] = dict(await super().landing_page(**kwargs))
        base = request_base_url(request)
        links = [link for link in page["links"] if link.get("rel") not in ("self", "root")]
        rows = await run_in_threadpool(self._collection_rows, request)
        children = [
            {
                "rel": "child",
                "type": JSON,
                "title": r["stac"].get("title") or r["id"],
                "href": stacrows.collection_url(base, r["id"]),
            }
            for r in rows
        ]
        page["links"] = [
            {"rel": "self", "type": JSON, "title": "This document", "href": base + "/"},
            {"rel": "root", "type": JSON, "title": "Root", "href": base + "/"},
            *links,
            {"rel": "health", "type": JSON, "title": "Service health", "href": base + "/health"},
            {
                "rel": "alternate",
                "type": "text/html",
                "title": "Explorer (web map)",
                "href": base + "/explorer",
            },
            *children,
        ]
        return page

    @staticmethod
    def _collection_rows(request: Request) -> list[dict[str, Any]]:
        limit = read_limit(request)  # a key limited to one collection lists that one only
        with connection(request) as conn:
            rows = stacrows.list_collection_rows(conn)
        return [r for r in rows if limit is None or r["id"] == limit]

    async def all_collections(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        request: Request = kwargs["request"]
        base = request_base_url(request)
        rows = await run_in_threadpool(self._collection_rows, request)
        collections = [stacrows.collection_to_stac(r, base) for r in rows]
        return collections_page(request, collections, kwargs, base)

    async def get_collection(  # type: ignore[override]
        self, collection_id: str, **kwargs: Any
    ) -> dict[str, Any]:
        request: Request = kwargs["request"]
        base = request_base_url(request)

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                return stacrows.get_collection(conn, collection_id, base)

        out = await run_in_threadpool(work)
        out["links"].append(
            {
                "rel": "queryables",
                "type": "application/schema+json",
                "title": "Queryables",
                "href": stacrows.collection_url(base, collection_id) + "/queryables",
            }
        )
        # one queryables link: a stored one (a mirrored collection's origin) is replaced
        seen = False
        links = []
        for link in reversed(out["links"]):
            if link.get("rel") == "queryables":
                if seen:
                    continue
                seen = True
            links.append(link)
        out["links"] = links[::-1]
        return out

    async def get_item(  # type: ignore[override]
        self, item_id: str, collection_id: str, **kwargs: Any
    ) -> GeoJSONDocument:
        request: Request = kwargs["request"]
        base = request_base_url(request)

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                return stacrows.get_item(conn, collection_id, item_id, base)

        return GeoJSONDocument(await run_in_threadpool(work))

    async def item_collection(  # type: ignore[override]
        self,
        collection_id: str,
        bbox: Any = None,
        datetime: Any = None,
        limit: int | None = None,
        token: str | None = None,
        **kwargs: Any,
    ) -> GeoJSONDocument:
        request: Request = kwargs["request"]
        base = request_base_url(request)
        search = get_query(
            request, kwargs, collections=[collection_id], bbox=bbox, datetime=datetime,
            limit=limit, token=token,
        )  # fmt: skip

        def work() -> SearchPage:
            with connection(request) as conn:
                stacrows.get_collection_row(conn, collection_id)  # 404 for unknown ids
            return run_search(request, search)

        page = await run_in_threadpool(work)
        path = f"/collections/{stacrows._q(collection_id)}/items"
        links = [
            {"rel": "self", "type": GEOJSON, "href": str(request.url)},
            {
                "rel": "collection",
                "type": JSON,
                "href": stacrows.collection_url(base, collection_id),
            },
            {"rel": "parent", "type": JSON, "href": stacrows.collection_url(base, collection_id)},
            *get_page_links(request, page, base, path),
        ]
        return item_collection(page.features, links, base, page)

    async def get_search(  # type: ignore[override]
        self,
        collections: list[str] | None = None,
        ids: list[str] | None = None,
        bbox: Any = None,
        intersects: Any = None,
        datetime: Any = None,
        limit: int | None = None,
        **kwargs: Any,
    ) -> GeoJSONDocument:
        request: Request = kwargs["request"]
        base = request_base_url(request)
        search = get_query(
            request, kwargs, collections=collections, ids=ids, bbox=bbox,
            intersects=intersects, datetime=datetime, limit=limit, token=kwargs.get("token"),
        )  # fmt: skip
        page = await run_in_threadpool(run_search, request, search)
        links = [
            {"rel": "self", "type": GEOJSON, "href": str(request.url)},
            *get_page_links(request, page, base, "/search"),
        ]
        return item_collection(page.features, links, base, page)

    async def post_search(  # type: ignore[override]
        self, search_request: Any, **kwargs: Any
    ) -> GeoJSONDocument:
        request: Request = kwargs["request"]
        base = request_base_url(request)
        # Before serialising (pydantic's serialiser fails past its own depth limit).
        check_depth(getattr(search_request, "filter_expr", None))
        # exclude_unset: the next/prev links must echo the client's body, not the model's
        # defaults (an echoed empty `fields` object would trim every later page).
        body = search_request.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude_unset=True
        )
        search = post_query(request, search_request, body)
        spec = getattr(search_request, "similarity", None)
        if spec is not None:
            from embcat.api.similarity import similarity_search

            search.collections = scoped_collections(request, search.collections)

            return await similarity_search(request, search, spec, body=body)
        page = await run_in_threadpool(run_search, request, search)
        links: list[dict[str, Any]] = [
            {"rel": "self", "type": GEOJSON, "href": f"{base}/search", "method": "POST"},
            *page_links(
                base, "/search", [("next", page.next_token), ("prev", page.prev_token)], body=body
            ),
        ]
        return item_collection(page.features, links, base, page)


__all__ = ["CoreClient"]
