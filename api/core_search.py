"""Item search of the STAC API core client: the request side and the result documents.

- ``get_query`` / ``post_query``: a GET request's parameters or a POST body -> a
  ``SearchQuery`` through the one parser of search parameters (catalog.search_request);
  ``page_limit``: the page size within the app's ``default_limit`` / ``max_limit``.
- ``run_search``: the page of a query (scoped to the caller's key, numberMatched per the
  app's ``number_matched`` mode); ``item_collection`` and ``get_page_links``: the
  FeatureCollection answered.
- ``SearchPostRequest``: the POST /search body model (depth, size and bbox checks first).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import field_validator, model_validator
from stac_fastapi.types.search import BaseSearchPostRequest

from embcat.api.auth import scoped_collections
from embcat.api.db import base_url as request_base_url
from embcat.api.db import connection
from embcat.api.responses import GeoJSONDocument
from embcat.catalog import stac as stacrows
from embcat.catalog.errors import InvalidInput
from embcat.catalog.geometry import MAX_VERTICES, too_many_positions
from embcat.catalog.search import (
    MAX_JSON_DEPTH,
    SearchPage,
    SearchQuery,
    apply_fields,
    count_matched,
    estimate_matched,
    json_depth,
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


def app_settings(request: Request) -> Any:
    return request.app.state.settings


def page_limit(request: Request, limit: int | None) -> int:
    settings = app_settings(request)
    if limit is None:
        return int(settings.default_limit)
    if limit < 1:
        raise InvalidInput("limit must be at least 1")
    return min(int(limit), int(settings.max_limit))


def fields_post(value: Any) -> dict[str, Any] | None:
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


def get_page_links(
    request: Request, page: SearchPage, base: str, path: str
) -> list[dict[str, Any]]:
    """The next / prev links of a GET search page (catalog.search_links)."""
    pages = [("next", page.next_token), ("prev", page.prev_token)]
    return page_links(base, path, pages, params=dict(request.query_params))


def item_collection(
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


def get_query(
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
        limit=page_limit(request, limit),
        token=token,
    )


def post_query(request: Request, search_request: Any, body: dict[str, Any]) -> SearchQuery:
    """The SearchQuery of a POST /search body (the validated model and its JSON dump),
    through the same single-value parsers as GET (catalog.search_request)."""
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
            fields_post(search_request.fields)
            if "fields" in search_request.model_fields_set
            else None
        ),
        limit=page_limit(request, search_request.limit),
        token=getattr(search_request, "token", None),
    )
    if "fields" in search_request.model_fields_set and search_request.fields is None:
        raise InvalidInput("fields must be an object with include and/or exclude")
    return search


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
            mode = app_settings(request).number_matched
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
