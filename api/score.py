"""Scoring an area in the API: ``POST /collections/{collection_id}/score``.

The body is a ``catalog.score.ScoreRequest`` (examples, method, threshold or top, the
search filters, the output format). The model is fitted and every filter checked before
the answer starts, so bad input is a 4xx JSON error; then the result streams from a
server-side cursor: GeoJSON (``application/geo+json``), GeoParquet or a PNG heat map. The
model and its labels travel with the result (``embcat:score``) and, for every format, in
the ``Embcat-Model`` header as a URL-safe summary: ``GET`` is not offered, bodies are
large. The route is a read: it needs the read scope on the path's collection (when keys
are required), like the other read routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from embcat.api.features import FeatureContext
from embcat.api.similarity import similarity_settings
from embcat.catalog.db import connect
from embcat.catalog.score import MEDIA_TYPES, ScoreModel, ScoreRequest, fit, parse_request, stream

SCORE_PATH = "/collections/{collection_id}/score"
EXTENSIONS = {"geojson": "geojson", "parquet": "parquet", "png": "png"}


def _start(request: Request, collection_id: str, req: ScoreRequest) -> StreamingResponse:
    holder = connect(request.app.state.settings)
    conn = holder.__enter__()
    try:
        timeout = int(getattr(request.app.state.settings, "statement_timeout_ms", 0) or 0)
        if timeout:
            conn.execute("select set_config('statement_timeout', %s, false)", (str(timeout),))
        model: ScoreModel = fit(conn, collection_id, req, similarity_settings(request))
        conn.rollback()
    except BaseException as exc:
        holder.__exit__(type(exc), exc, exc.__traceback__)
        raise

    def body() -> Iterator[bytes]:
        try:
            yield from stream(conn, model, req)
        finally:
            holder.__exit__(None, None, None)

    name = f"{collection_id}-score.{EXTENSIONS[req.format]}"
    headers = {
        "Content-Disposition": f'attachment; filename="{quote(name, safe="")}"',
        "Embcat-Method": model.method,
        "Embcat-Threshold": "" if model.threshold is None else repr(model.threshold),
        "Embcat-Top": "" if model.top is None else str(model.top),
        "Embcat-Positive": ",".join(quote(r.id, safe="") for r in model.positive),
        "Embcat-Negative": ",".join(quote(r.id, safe="") for r in model.negative),
    }
    return StreamingResponse(body(), media_type=MEDIA_TYPES[req.format], headers=headers)


def build_router(ctx: FeatureContext) -> APIRouter:
    """The scoring route of one app (a POST that only reads: the read scope)."""
    router = APIRouter(tags=["Scoring"], dependencies=[ctx.read()])

    @router.post(
        SCORE_PATH,
        summary="Score every chip of an area with a few-shot model",
        description=(
            "Fits a few-shot model (`linear` or `prototype`, as in the similarity clause)"
            " on positive and negative example items and scores every chip of the"
            " collection matching `bbox`/`intersects`, `datetime` and `filter`, exactly,"
            " in the database. Answers the chips with `score >= threshold` (default 0.5:"
            " halfway between the negatives' level, 0, and the positives', 1) or the `top`"
            " N, streamed as GeoJSON, GeoParquet or a PNG heat map (`format`). The model"
            " and labels are saved with the result under `embcat:score`."
        ),
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {m: {} for m in MEDIA_TYPES.values()},
                "description": "The scored chips (streamed).",
            }
        },
        name="score_area",
    )
    async def score_area(
        request: Request,
        collection_id: str,
        body: Annotated[
            dict[str, Any],
            Body(
                examples=[
                    {
                        "positive": ["tile-0001", "tile-0042"],
                        "negative": ["tile-0007"],
                        "bbox": [5.0, 45.0, 8.0, 48.0],
                        "format": "geojson",
                    }
                ]
            ),
        ],
    ) -> StreamingResponse:
        req = parse_request(body)
        return await run_in_threadpool(_start, request, collection_id, req)

    return router
