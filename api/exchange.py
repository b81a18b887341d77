"""Data exchange routes: vector assets, bulk GeoParquet export, change feed, space.

- ``GET /exchange``: capabilities (how ``embcat mirror`` recognises an embcat server).
- ``GET /collections/{cid}/items/{iid}/embedding``: the item's vector
  (``api.exchange_vectors``).
- ``GET|POST /collections/{cid}/export``: a search as stac-geoparquet with the vectors, or
  NeuCo-Bench's CSV (``api.exchange_export``).
- ``GET /collections/{cid}/changes`` and ``GET /collections/{cid}/space``: the change feed
  and the collection's embedding space (``api.exchange_changes``).

``build_router`` is the feature of ``api.app.FEATURES``: the capabilities route and the
routers of those three modules, each with the app's read-scope check (exports and the
change feed only read).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from embcat.api import exchange_changes, exchange_export, exchange_vectors
from embcat.api.exchange_export import EXPORT_FORMATS, PARQUET_MEDIA_TYPE
from embcat.api.features import FeatureContext
from embcat.catalog.quantize import DTYPES, LAYOUTS

EXCHANGE_PATH = "/exchange"
EXCHANGE_VERSION = "1"


def capabilities() -> dict[str, Any]:
    return {
        "version": EXCHANGE_VERSION,
        "export": {
            "dtypes": list(DTYPES),
            "media_type": PARQUET_MEDIA_TYPE,
            "columns": ["full", "minimal"],
            "vector_layouts": list(LAYOUTS),
            "formats": list(EXPORT_FORMATS),
            "checksum": "sha256",
        },
        "changes": True,
        "vector_formats": ["npy", "raw"],
    }


def build_router(ctx: FeatureContext) -> APIRouter:
    """The exchange routes of one app (read scope: exports and the change feed only read)."""
    router = APIRouter(tags=["Exchange"])
    router.add_api_route(
        EXCHANGE_PATH,
        capabilities,
        methods=["GET"],
        summary="Data exchange capabilities of this server",
        dependencies=[ctx.read()],
    )
    for build in (
        exchange_vectors.build_router,
        exchange_export.build_router,
        exchange_changes.build_router,
    ):
        router.include_router(build(ctx))
    return router
