"""The STAC API's queryables and sortables clients: property keys and JSON types found in
the stored items (``catalog.search_fields.queryables``)."""

from __future__ import annotations

from typing import Any

import attr
from fastapi import Request
from stac_fastapi.extensions.filter.client import AsyncBaseFiltersClient
from stac_fastapi.extensions.sort.client import AsyncBaseSortablesClient
from stac_fastapi.types.requests import get_base_url
from starlette.concurrency import run_in_threadpool

from embcat.api.db import base_url as request_base_url
from embcat.api.db import connection
from embcat.catalog import stac as stacrows
from embcat.catalog.search import queryables


@attr.s
class FiltersClient(AsyncBaseFiltersClient):
    """Queryables derived from the data (property keys and JSON types of stored items)."""

    async def get_queryables(
        self, collection_id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        request: Request = kwargs["request"]
        base = request_base_url(request)

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                if collection_id is not None:
                    stacrows.get_collection_row(conn, collection_id)
                return queryables(conn, collection_id)

        props = await run_in_threadpool(work)
        path = (
            "/queryables"
            if collection_id is None
            else (f"/collections/{stacrows._q(collection_id)}/queryables")
        )
        return {
            "$schema": "https://json-schema.org/draft/2019-09/schema",
            "$id": base + path,
            "type": "object",
            "title": "Queryables" + (f" of {collection_id}" if collection_id else ""),
            "properties": props,
            "additionalProperties": True,
        }


SORTABLES = {
    "id": {"title": "Item ID", "type": "string"},
    "collection": {"title": "Collection ID", "type": "string"},
    "datetime": {"title": "Acquisition time", "type": "string", "format": "date-time"},
    "start_datetime": {"type": "string", "format": "date-time"},
    "end_datetime": {"type": "string", "format": "date-time"},
}


@attr.s
class SortablesClient(AsyncBaseSortablesClient):
    """Sortables: the indexed columns plus the scalar properties found in the data."""

    async def _sortables(self, request: Request, collection_id: str | None) -> dict[str, Any]:
        base = get_base_url(request).rstrip("/")

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                if collection_id is not None:
                    stacrows.get_collection_row(conn, collection_id)
                return queryables(conn, collection_id)

        props = await run_in_threadpool(work)
        out = dict(SORTABLES)
        for key, schema in props.items():
            if key not in out and schema.get("type") in ("string", "number", "boolean"):
                out[key] = schema
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{base}/sortables",
            "type": "object",
            "title": "Sortables",
            "properties": out,
            "additionalProperties": True,
        }

    async def get_sortables(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return await self._sortables(kwargs["request"], None)

    async def get_collection_sortables(  # type: ignore[override]
        self, collection_id: str, **kwargs: Any
    ) -> dict[str, Any]:
        return await self._sortables(kwargs["request"], collection_id)

    async def get_collections_sortables(  # type: ignore[override]
        self, **kwargs: Any
    ) -> dict[str, Any]:
        request: Request = kwargs["request"]
        base = get_base_url(request).rstrip("/")
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{base}/collections-sortables",
            "type": "object",
            "title": "Collection sortables",
            "properties": {"id": {"type": "string"}},
            "additionalProperties": True,
        }
