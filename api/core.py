"""The STAC API core client: landing page, collections, items, item search, queryables.

The client is async (stac-fastapi awaits it); database work runs in the thread pool on
sync psycopg connections from ``api.db``. All SQL lives in catalog/ (search.py, stac.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import attr
from fastapi import Request
from pydantic import field_validator, model_validator
from stac_fastapi.types.core import AsyncBaseCoreClient
from stac_fastapi.types.search import BaseSearchPostRequest
from starlette.concurrency import run_in_threadpool

from embcat.api.auth import read_limit, scoped_collections
from embcat.api.db import base_url as request_base_url
from embcat.api.db import connection
from embcat.api.queryables import FiltersClient, SortablesClient  # re-exported for api.app
from embcat.api.responses import GeoJSONDocument
from embcat.catalog import stac as stacrows
from embcat.catalog.errors import InvalidInput
from embcat.catalog.geometry import MAX_VERTICES, too_many_positions
from embcat.catalog.search import (
    MAX_JSON_DEPTH,
    SearchPage,
    SearchQuery,
    apply_fields,
    check_depth,
    count_matched,
    estimate_matched,
    json_depth,
    parse_interval,
    search_items,
)
from embcat.catalog.search_links import page_links
from embcat.catalog.search_request import (
    BBOX_MESSAGE,
    parse_bbox,
    parse_datetime,
    parse_fields,
    parse_filter,
    parse_json,
    parse_sortby,
)

GEOJSON = "application/geo+json"
JSON = "application/json"


def _settings(request: Request) -> Any:
    return request.app.state.settings


def _limit(request: Request, limit: int | None) -> int:
    settings = _settings(request)
    if limit is None:
        return int(settings.default_limit)
    if limit < 1:
        raise InvalidInput("limit must be at least 1")
    return min(int(limit), int(settings.max_limit))


def _fields_post(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return {
            "include": list(value.get("include") or []),
            "exclude": list(value.get("exclude") or []),
            "include_given": "include" in value,
        }
    return {
        "include": sorted(value.include or []),
        "exclude": sorted(value.exclude or []),
        "include_given": "include" in value.model_fields_set,
    }


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _page_links(request: Request, page: SearchPage, base: str, path: str) -> list[dict[str, Any]]:
    """The next / prev links of a GET search page (catalog.search_links)."""
    pages = [("next", page.next_token), ("prev", page.prev_token)]
    return page_links(base, path, pages, params=dict(request.query_params))


def _item_collection(
    features: list[dict[str, Any]],
    links: list[dict[str, Any]],
    base: str,
    page: SearchPage | None = None,
) -> GeoJSONDocument:
    out: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": features,
        "links": [
            {"rel": "root", "type": JSON, "title": "Catalogue root", "href": base + "/"},
            *links,
        ],
    }
    if page is not None:  # numberMatched (exact, or an estimate flagged as such)
        out.update({k: v for k, v in page.extra.items() if "numberMatched" in k})
    out["numberReturned"] = len(features)
    return GeoJSONDocument(out)


def _get_query(
    request: Request,
    kwargs: dict[str, Any],
    *,
    collections: list[str] | None,
    bbox: Any,
    datetime: Any,
    limit: int | None,
    token: str | None,
    ids: list[str] | None = None,
    intersects: Any = None,
) -> SearchQuery:
    """The SearchQuery of a GET request (/search and /collections/{id}/items), through the
    one parser of search parameters (catalog.search_request)."""
    flt, lang = parse_filter(kwargs.get("filter_expr"), kwargs.get("filter_lang"))
    return SearchQuery(
        collections=collections,
        ids=ids,
        bbox=parse_bbox(bbox),
        intersects=parse_json("intersects", intersects),
        datetime=parse_datetime(datetime),
        filter=flt,
        filter_lang=lang,
        query=parse_json("query", kwargs.get("query")),
        q=kwargs.get("q"),
        sortby=parse_sortby(kwargs.get("sortby")),
        fields=parse_fields(kwargs.get("fields")),
        limit=_limit(request, limit),
        token=token,
    )


def run_search(request: Request, search: SearchQuery) -> SearchPage:
    try:
        return _run_search(request, search)
    except RecursionError:  # a safety net only: the depth caps refuse such input first
        raise InvalidInput("the search is nested too deeply") from None


def _run_search(request: Request, search: SearchQuery) -> SearchPage:
    base = request_base_url(request)
    search.collections = scoped_collections(request, search.collections)

    def work() -> SearchPage:
        with connection(request) as conn:
            if search.collections:
                missing = [c for c in search.collections if not stacrows.collection_exists(conn, c)]
                if missing and len(missing) == len(search.collections):
                    return SearchPage(features=[], extra={"numberMatched": 0})
            page = search_items(conn, search, base)
            mode = _settings(request).number_matched
            complete = not (page.next_token or page.prev_token or search.token)
            if mode != "off" and complete:  # the page holds every match: exact, free
                page.extra["numberMatched"] = len(page.features)
            elif mode == "exact":
                page.extra["numberMatched"], estimated = count_matched(conn, search)
                if estimated:
                    page.extra["embcat:numberMatched_estimated"] = True
            elif mode == "estimate":
                estimate = estimate_matched(conn, search)
                page.extra["numberMatched"] = max(estimate, len(page.features))
                page.extra["embcat:numberMatched_estimated"] = True
        if search.fields:
            page.features = [apply_fields(f, search.fields) for f in page.features]
        return page

    return work()


class SearchPostRequest(BaseSearchPostRequest):
    """POST /search body; ``collections``/``ids`` may also be a comma-separated string.

    The body must be a JSON object nested at most MAX_JSON_DEPTH deep: checked before any
    other validator (stac-pydantic's assume an object) and before any serialisation."""

    @model_validator(mode="before")
    @classmethod
    def _object_of_bounded_depth(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"the search body must be a JSON object, not {_json_type(value)}")
        if too_many_positions(value.get("intersects")):
            # Before the GeoJSON models parse it (a second of CPU per 20,000 positions,
            # on the event loop): the cap of catalog.geometry, checked cheaply first.
            raise ValueError(f"intersects: geometry has more than {MAX_VERTICES} vertices")
        if json_depth(value) > MAX_JSON_DEPTH + 1:  # +1: the body object itself
            raise ValueError(f"the search body is nested too deeply (at most {MAX_JSON_DEPTH})")
        return value

    @field_validator("collections", "ids", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return [v for v in value.split(",") if v] if isinstance(value, str) else value

    @field_validator("bbox", mode="before")
    @classmethod
    def _shared_bbox(cls, value: Any) -> Any:
        # InvalidInput (not a ValueError): the handler answers the parser's own message,
        # the one GET search, export and the CLI give, not pydantic's tuple variants.
        if isinstance(value, str):  # a body's bbox is a list (GET's is the text form)
            raise InvalidInput(BBOX_MESSAGE.format(value))
        return parse_bbox(value)


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
        collections = _filter_collections(
            collections,
            bbox=kwargs.get("bbox"),
            datetime=parse_datetime(kwargs.get("datetime")),
            q=kwargs.get("q"),
        )
        total = len(collections)
        limit = _limit(request, kwargs.get("limit"))
        offset = int(kwargs.get("offset") or 0)
        if offset < 0:
            raise InvalidInput("offset must be >= 0")
        page = collections[offset : offset + limit]
        fields = parse_fields(kwargs.get("fields"))
        if fields:
            page = [apply_fields(c, fields) for c in page]
        links: list[dict[str, Any]] = [
            {"rel": "root", "type": JSON, "href": base + "/"},
            {"rel": "parent", "type": JSON, "href": base + "/"},
            {"rel": "self", "type": JSON, "href": str(request.url)},
        ]
        params = {k: v for k, v in request.query_params.items() if k != "offset"}
        if offset + limit < total:
            links.append(
                {
                    "rel": "next",
                    "type": JSON,
                    "href": f"{base}/collections?"
                    + urlencode({**params, "offset": offset + limit}),
                }
            )
        if offset > 0:
            links.append(
                {
                    "rel": "prev",
                    "type": JSON,
                    "href": f"{base}/collections?"
                    + urlencode({**params, "offset": max(offset - limit, 0)}),
                }
            )
        return {
            "collections": page,
            "links": links,
            "numberMatched": total,
            "numberReturned": len(page),
        }

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
        search = _get_query(
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
            *_page_links(request, page, base, path),
        ]
        return _item_collection(page.features, links, base, page)

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
        search = _get_query(
            request, kwargs, collections=collections, ids=ids, bbox=bbox,
            intersects=intersects, datetime=datetime, limit=limit, token=kwargs.get("token"),
        )  # fmt: skip
        page = await run_in_threadpool(run_search, request, search)
        links = [
            {"rel": "self", "type": GEOJSON, "href": str(request.url)},
            *_page_links(request, page, base, "/search"),
        ]
        return _item_collection(page.features, links, base, page)

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
        flt, lang = parse_filter(
            getattr(search_request, "filter_expr", None),
            getattr(search_request, "filter_lang", None),
        )
        search = SearchQuery(
            collections=search_request.collections,
            ids=search_request.ids,
            bbox=parse_bbox(search_request.bbox),
            intersects=body.get("intersects"),
            datetime=parse_datetime(body.get("datetime")),
            filter=flt,
            filter_lang=lang,
            query=getattr(search_request, "query", None),
            q=getattr(search_request, "q", None),
            sortby=parse_sortby(getattr(search_request, "sortby", None)),
            fields=(
                _fields_post(search_request.fields)
                if "fields" in search_request.model_fields_set
                else None
            ),
            limit=_limit(request, search_request.limit),
            token=getattr(search_request, "token", None),
        )
        if "fields" in search_request.model_fields_set and search_request.fields is None:
            raise InvalidInput("fields must be an object with include and/or exclude")
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
        return _item_collection(page.features, links, base, page)


def _filter_collections(
    collections: list[dict[str, Any]], *, bbox: Any, datetime: str | None, q: Any
) -> list[dict[str, Any]]:
    """Collection search over the (few) collections: bbox, datetime and free text."""
    out = []
    start = end = None
    if datetime:
        start, end = parse_interval(datetime)
    terms = [t.strip().lower() for t in (q or []) if t and t.strip()]
    for c in collections:
        extent = c.get("extent") or {}
        if bbox is not None:
            b = list(bbox)
            b = [b[0], b[1], b[3], b[4]] if len(b) == 6 else b
            boxes = (extent.get("spatial") or {}).get("bbox") or [[-180, -90, 180, 90]]
            cb = boxes[0]
            cb = [cb[0], cb[1], cb[3], cb[4]] if len(cb) == 6 else cb
            if cb[0] > b[2] or cb[2] < b[0] or cb[1] > b[3] or cb[3] < b[1]:
                continue
        if datetime:
            from embcat.catalog.search import parse_timestamp

            iv = ((extent.get("temporal") or {}).get("interval") or [[None, None]])[0]
            cs = parse_timestamp(iv[0]) if iv[0] else None
            ce = parse_timestamp(iv[1]) if iv[1] else None
            if (end is not None and cs is not None and cs > end) or (
                start is not None and ce is not None and ce < start
            ):
                continue
        if terms:
            text = " ".join(
                str(c.get(k) or "") for k in ("id", "title", "description", "keywords")
            ).lower()
            if not any(t in text for t in terms):
                continue
        out.append(c)
    return out


__all__ = ["CoreClient", "FiltersClient", "SearchPostRequest", "SortablesClient", "run_search"]
