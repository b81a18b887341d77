"""The vector asset route: ``GET /collections/{cid}/items/{iid}/embedding``.

The item's vector; ``.npy`` float32 by default (exactly the bytes of the asset's
``file:size``/``file:checksum``; the ETag is the checksum), ``format=raw`` for little-endian
values with ``Embcat-Dtype`` and ``Embcat-Shape`` headers, ``dtype=float16`` for half the
bytes. ``build_router`` alone is what a plain STAC API with vector assets serves (tests);
``api.exchange`` includes it with the other exchange routes.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from embcat.api.db import connection
from embcat.api.features import FeatureContext
from embcat.catalog.errors import InvalidInput
from embcat.catalog.store.vectors import item_vector
from embcat.catalog.vectors import NPY_MEDIA_TYPE, multihash_sha256, npy_bytes

EMBEDDING_PATH = "/collections/{collection_id}/items/{item_id}/embedding"


def _vector(request: Request, cid: str, iid: str) -> tuple[np.ndarray, str | None]:
    with connection(request) as conn:
        return item_vector(conn, cid, iid)


async def get_embedding(
    request: Request,
    collection_id: str,
    item_id: str,
    format: Annotated[str, Query(description="npy or raw (little-endian values)")] = "npy",
    dtype: Annotated[str, Query(description="float32 or float16")] = "float32",
) -> Response:
    if format not in ("npy", "raw"):
        raise InvalidInput(f"format must be 'npy' or 'raw', got {format!r}")
    if dtype not in ("float32", "float16"):
        raise InvalidInput(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    values, _stored = await run_in_threadpool(_vector, request, collection_id, item_id)
    if format == "npy":
        data = npy_bytes(values, dtype)
        media, headers = NPY_MEDIA_TYPE, {}
    else:
        data = values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        media = "application/octet-stream"
        headers = {"Embcat-Dtype": f"<{'f4' if dtype == 'float32' else 'f2'}"}
    etag = f'"{multihash_sha256(data)}"'
    headers.update(
        {
            "ETag": etag,
            "Embcat-Shape": str(len(values)),
            "Cache-Control": "no-cache",
            "Content-Disposition": f'attachment; filename="{quote(item_id, safe="")}.'
            f'{"npy" if format == "npy" else "bin"}"',
        }
    )
    match = request.headers.get("if-none-match")
    if match and etag in [m.strip() for m in match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(data, media_type=media, headers=headers)


def build_router(ctx: FeatureContext) -> APIRouter:
    """The vector asset route of one app (read scope)."""
    router = APIRouter(tags=["Exchange"], dependencies=[ctx.read()])
    router.add_api_route(
        EMBEDDING_PATH,
        get_embedding,
        methods=["GET"],
        summary="The item's embedding vector (.npy by default)",
        response_class=Response,
    )
    return router
