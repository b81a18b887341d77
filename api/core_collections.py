"""Collection search of the STAC API core client: ``GET /collections`` over the (few)
collections, filtered in Python by bbox, datetime and free text, paged by ``offset``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from embcat.api.core_search import JSON, page_limit
from embcat.catalog.errors import InvalidInput
from embcat.catalog.search import apply_fields, parse_interval, parse_timestamp
from embcat.catalog.search_request import parse_datetime, parse_fields


def collections_page(
    request: Request, collections: list[dict[str, Any]], kwargs: dict[str, Any], base: str
) -> dict[str, Any]:
    """The ``/collections`` document: the collections that match the request's bbox,
    datetime and ``q``, the page at ``offset``, with next / prev links."""
    collections = filter_collections(
        collections,
        bbox=kwargs.get("bbox"),
        datetime=parse_datetime(kwargs.get("datetime")),
        q=kwargs.get("q"),
    )
    total = len(collections)
    limit = page_limit(request, kwargs.get("limit"))
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
                "href": f"{base}/collections?" + urlencode({**params, "offset": offset + limit}),
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


def filter_collections(
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
