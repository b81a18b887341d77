"""Similarity search in the STAC API: a conformance class of its own.

- ``POST /search`` accepts ``"similarity": {...}`` (``catalog.similarity.SimilaritySpec``)
  next to every other search parameter; results are ranked by similarity and carry
  ``properties["similarity:distance"]`` and ``properties["similarity:score"]``.
- ``GET /collections/{collection_id}/items/{item_id}/similar`` ranks items by similarity
  to one item, with the search filters as query parameters.

Ranked results page by offset: the ``next`` link carries ``token=sim:<offset>``, bounded
by ``EMBCAT_SIMILARITY_MAX_K``. The item searched by is left out of its own results.
"""

from __future__ import annotations

from typing import Annotated, Any

import attr
from fastapi import APIRouter, FastAPI, Path, Query, Request
from pydantic import BaseModel, Field
from stac_fastapi.api.models import GeoJSONResponse
from stac_fastapi.types.extension import ApiExtension
from starlette.concurrency import run_in_threadpool

from embcat.api.auth import check_read_collections
from embcat.api.db import base_url as request_base_url
from embcat.api.db import connection
from embcat.api.responses import GeoJSONDocument
from embcat.catalog import stac as stacrows
from embcat.catalog.errors import InvalidInput
from embcat.catalog.filters import Filter
from embcat.catalog.search import SearchQuery, apply_fields
from embcat.catalog.search_links import page_links
from embcat.catalog.search_request import search_from_params
from embcat.catalog.similarity import (
    Hit,
    SimilaritySettings,
    SimilaritySpec,
    parse_spec,
    similar,
)

SIMILARITY_CONFORMANCE = "https://embcat.dev/spec/similarity/v1"
TOKEN_PREFIX = "sim:"
GEOJSON = "application/geo+json"
JSON_TYPE = "application/json"

SEARCH_EXAMPLES = {
    "by item": {
        "summary": "Items similar to one item, inside a bbox",
        "value": {
            "collections": ["s2-mosaiks"],
            "bbox": [5.0, 45.0, 8.0, 48.0],
            "limit": 10,
            "similarity": {"item": {"collection": "s2-mosaiks", "id": "tile-0001"}},
        },
    },
    "by vector": {
        "summary": "Exact search with a raw vector of the collection's space",
        "value": {
            "collections": ["s2-mosaiks"],
            "datetime": "2024-01-01T00:00:00Z/2024-12-31T23:59:59Z",
            "similarity": {
                "vector": [0.12, -0.03, 0.88],
                "collection": "s2-mosaiks",
                "exact": True,
            },
        },
    },
    "few-shot": {
        "summary": "A linear classifier over positive and negative examples",
        "value": {
            "collections": ["s2-mosaiks"],
            "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
            "similarity": {
                "positive": [
                    {"collection": "s2-mosaiks", "id": "tile-0001"},
                    {"collection": "s2-mosaiks", "id": "tile-0042"},
                ],
                "negative": [{"collection": "s2-mosaiks", "id": "tile-0007"}],
                "method": "linear",
                "ef_search": 200,
            },
        },
    },
}


class SimilaritySearchPostRequest(BaseModel):
    """POST /search mixin: the ``similarity`` clause."""

    similarity: SimilaritySpec | None = Field(
        default=None,
        description=(
            "Rank the results by similarity: to an item ({'item': {collection, id}}), to a"
            " raw vector ({'vector': [...], 'collection': C}) or to few-shot examples"
            " ({'positive': [...], 'negative': [...], 'method': 'prototype'|'linear'});"
            " optional 'exact' and 'ef_search'. Features carry similarity:distance and"
            " similarity:score."
        ),
    )


def similarity_settings(request: Request) -> SimilaritySettings:
    """The app's similarity settings (its settings tree's, put there by create_app)."""
    found: SimilaritySettings = request.app.state.similarity_settings
    return found


def _offset(token: str | None) -> int:
    if not token:
        return 0
    if not token.startswith(TOKEN_PREFIX) or not token[len(TOKEN_PREFIX) :].isdigit():
        raise InvalidInput(
            f"invalid token {token!r} for a similarity search (expected '{TOKEN_PREFIX}<offset>')"
        )
    return int(token[len(TOKEN_PREFIX) :])


def _features(hits: list[Hit], search: SearchQuery, base: str) -> list[dict[str, Any]]:
    """STAC items of the hits (their rows were read by the ranking query itself)."""
    out = []
    for h in hits:
        if h.item is None:  # no items row (cannot happen while the foreign key holds)
            continue
        item = stacrows.item_to_stac(h.item, base)
        item["properties"]["similarity:distance"] = h.distance
        item["properties"]["similarity:score"] = h.score
        out.append(apply_fields(item, search.fields) if search.fields else item)
    return out


def _search(
    request: Request, search: SearchQuery, spec: SimilaritySpec, offset: int, base: str
) -> list[dict[str, Any]]:
    if search.sortby:
        raise InvalidInput("sortby cannot be combined with similarity: results are ranked")
    # The filter renders the parts the embedding rows answer themselves; only the rest
    # joins items (catalog.filters).
    flt = Filter.from_search(search)
    with connection(request) as conn:
        hits = similar(
            conn,
            spec,
            flt,
            search.limit,
            offset,
            settings=similarity_settings(request),
            item_columns=stacrows.ITEM_COLUMNS,
        )
    return _features(hits, search, base)


async def similarity_search(
    request: Request,
    search: SearchQuery,
    spec: SimilaritySpec | dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    get_path: str | None = None,
) -> GeoJSONDocument:
    """A ranked ItemCollection for ``search`` + ``spec``: POST links echoing ``body`` (the
    client's search body, as api.core serialised it once), or GET links to ``get_path``."""
    spec = parse_spec(spec)
    # Every collection the clause names (example items, a raw vector's space) is read too.
    check_read_collections(
        request, [*(search.collections or []), *(r.collection for r in spec.references),
                  spec.collection],
    )  # fmt: skip
    base = request_base_url(request)
    offset = _offset(search.token)

    features = await run_in_threadpool(_search, request, search, spec, offset, base)
    settings = similarity_settings(request)
    more = len(features) == search.limit and offset + 2 * search.limit <= settings.max_k
    pages = [
        ("next", f"{TOKEN_PREFIX}{offset + search.limit}" if more else None),
        ("prev", f"{TOKEN_PREFIX}{max(offset - search.limit, 0)}" if offset > 0 else None),
    ]
    if get_path is None:
        self_link = {"rel": "self", "type": GEOJSON, "href": f"{base}/search", "method": "POST"}
        links = [self_link, *page_links(base, "/search", pages, body=body or {})]
    else:
        self_link = {"rel": "self", "type": GEOJSON, "href": str(request.url)}
        params = dict(request.query_params)
        links = [self_link, *page_links(base, get_path, pages, params=params)]
    return GeoJSONDocument(
        {
            "type": "FeatureCollection",
            "features": features,
            "links": [{"rel": "root", "type": JSON_TYPE, "href": base + "/"}, *links],
            "numberReturned": len(features),
        }
    )


def similar_router() -> APIRouter:
    router = APIRouter(tags=["Similarity"])

    @router.get(
        "/collections/{collection_id}/items/{item_id}/similar",
        summary="Items most similar to an item",
        description=(
            "Items ranked by similarity to the item's vector (the item itself left out),"
            " in its collection unless `collections` names others of the same embedding"
            " space, filtered like item search. Features carry `similarity:distance` and"
            " `similarity:score`. Example: `/collections/s2-mosaiks/items/tile-0001/similar"
            "?bbox=5,45,8,48&limit=10`."
        ),
        response_class=GeoJSONResponse,
        name="similar_items",
    )
    async def similar_items(
        request: Request,
        collection_id: Annotated[str, Path(description="Collection of the query item")],
        item_id: Annotated[str, Path(description="The query item")],
        bbox: Annotated[
            str | None, Query(description="minx,miny,maxx,maxy", examples=["5,45,8,48"])
        ] = None,
        datetime: Annotated[
            str | None,
            Query(description="RFC 3339 instant or interval", examples=["2024-01-01T00:00:00Z/.."]),
        ] = None,
        filter_: Annotated[
            str | None,
            Query(alias="filter", description="CQL2 filter", examples=["eo:cloud_cover < 20"]),
        ] = None,
        filter_lang: Annotated[
            str | None, Query(alias="filter-lang", description=("cql2-text or cql2-json"))
        ] = None,
        collections: Annotated[
            str | None,
            Query(description=("Comma-separated collections to search (same embedding space)")),
        ] = None,
        limit: Annotated[int | None, Query(ge=1, description="Page size")] = None,
        k: Annotated[int | None, Query(ge=1, description="Alias of limit")] = None,
        exact: Annotated[bool, Query(description="Exact search (no index)")] = False,
        ef_search: Annotated[
            int | None, Query(ge=1, le=1000, description=("HNSW search effort"))
        ] = None,
        token: Annotated[str | None, Query(description="Page token (sim:<offset>)")] = None,
    ) -> GeoJSONDocument:
        app_settings = request.app.state.settings
        size = k or limit or int(app_settings.default_limit)
        params = {
            "collections": collections, "bbox": bbox, "datetime": datetime,
            "filter": filter_, "filter-lang": filter_lang, "token": token,
        }  # fmt: skip
        search = search_from_params(
            params, limit=min(size, int(app_settings.max_limit)), collections=[collection_id]
        )
        spec = parse_spec(
            {
                "item": {"collection": collection_id, "id": item_id},
                "exact": exact,
                "ef_search": ef_search,
            }
        )
        path = f"/collections/{stacrows._q(collection_id)}/items/{stacrows._q(item_id)}/similar"
        return await similarity_search(request, search, spec, get_path=path)

    return router


@attr.s
class SimilarityExtension(ApiExtension):
    """Similarity search: POST /search ``similarity`` clause and GET .../similar."""

    POST = SimilaritySearchPostRequest
    GET = None
    conformance_classes: list[str] = attr.ib(factory=lambda: [SIMILARITY_CONFORMANCE])
    schema_href: str | None = attr.ib(default=None)

    def register(self, app: FastAPI) -> None:
        app.include_router(similar_router())
        _add_openapi_examples(app)


def _add_openapi_examples(app: FastAPI) -> None:
    """Add request examples of the similarity clause to POST /search in the OpenAPI doc."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        post = schema.get("paths", {}).get("/search", {}).get("post")
        if post is not None:
            content = post.setdefault("requestBody", {}).setdefault("content", {})
            content.setdefault("application/json", {})["examples"] = SEARCH_EXAMPLES
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
