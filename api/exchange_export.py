"""The bulk export routes: ``GET|POST /collections/{cid}/export``.

A STAC search as stac-geoparquet with vectors, streamed row group by row group
(catalog.export); resumable with ``after`` + ``as_of``; ``columns=minimal`` for the vectors
only, ``format=neuco-csv`` for NeuCo-Bench's CSV. ``vector_layout=bytes`` (default:
fixed_size_binary vectors) or ``list`` (fixed_size_list). A part (``limit``) or
``checksum=sha256`` is built before it is sent, so that its SHA-256 goes in the headers
(``Embcat-Sha256``, ``Repr-Digest``) with its ``Content-Length``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Body, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from embcat.api.db import api_session_options
from embcat.api.db import base_url as request_base_url
from embcat.api.features import FeatureContext
from embcat.catalog.db import connect
from embcat.catalog.errors import DatabaseUnavailable, InvalidInput
from embcat.catalog.export import (
    CSV_MEDIA_TYPE,
    ExportPlan,
    ExportRequest,
    csv_request,
    plan_export,
    stream_csv,
    stream_export,
)
from embcat.catalog.filters import Filter
from embcat.catalog.search_request import search_from_params

log = logging.getLogger(__name__)

EXPORT_PATH = "/collections/{collection_id}/export"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"


def _export_request(collection_id: str, params: dict[str, Any], base: str) -> ExportRequest:
    known = {
        "dtype", "bbox", "intersects", "datetime", "filter", "filter-lang", "filter_lang",
        "ids", "query", "q", "limit", "after", "as_of", "batch_size",
        "columns", "order", "format", "checksum", "vector_layout",
    }  # fmt: skip
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidInput(f"unknown export parameter(s) {unknown}")
    after = params.get("after")
    if after is not None and not isinstance(after, str):
        raise InvalidInput("after must be the id of the last item received (a string)")
    for name in ("dtype", "datetime", "q", "vector_layout"):
        value = params.get(name)
        if (
            value is not None
            and not isinstance(value, str)
            and not (
                name == "q" and isinstance(value, list) and all(isinstance(v, str) for v in value)
            )
        ):
            raise InvalidInput(f"{name} must be a string")
    # The search part is parsed as GET and POST /search parse theirs (one parser, one set
    # of messages); export's ``limit`` is its own (rows in all, none by default).
    query = search_from_params({k: v for k, v in params.items() if k != "limit"})
    Filter.from_search(query)  # a bad filter is refused before the response starts

    def _int(name: str) -> int | None:
        value = params.get(name)
        if value is None or value == "":
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{name} must be an integer, got {value!r}") from None

    return ExportRequest(
        collection_id=collection_id,
        dtype=str(params.get("dtype") or "float32"),
        query=query,
        after=params.get("after") or None,
        as_of=_int("as_of"),
        limit=_int("limit"),
        batch_size=_int("batch_size") or 2048,
        base_url=base,
        columns=str(params.get("columns") or "full"),
        order=params.get("order") or None,
        vector_layout=str(params.get("vector_layout") or "bytes"),
    )


class ExportBusy(DatabaseUnavailable):
    """Every export slot of this process is streaming; retry shortly (503 + Retry-After)."""


class _ExportResponse(StreamingResponse):
    """A streaming response that always runs ``cleanup`` once it is over: sent in full,
    failed, or cut short by the client (a disconnect cancels the send; without this the
    paused generator, its transaction and its connection stayed until garbage collection)."""

    def __init__(
        self,
        content: Iterator[bytes],
        cleanup: Callable[[], None],
        stall_s: float | None = None,
        **kw: Any,
    ):
        self._chunks = content
        self._cleanup = cleanup
        self._stall_s = stall_s
        super().__init__(self._pull(), **kw)

    async def _pull(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await run_in_threadpool(next, self._chunks, None)
            if chunk is None:
                return
            yield chunk

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        stall_s = self._stall_s

        async def send_or_give_up(message: Any) -> None:
            # A client that reads nothing for stall_s seconds loses its stream (and slot).
            with anyio.fail_after(stall_s):
                await send(message)

        try:
            await super().__call__(scope, receive, send if stall_s is None else send_or_give_up)
        except TimeoutError:
            log.warning("export stream abandoned: the client read nothing for %s s", stall_s)
        finally:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self._cleanup)


EXPORT_FORMATS = ("parquet", "neuco-csv")
SPOOL_MEMORY_BYTES = 32 * 2**20  # a precomputed body beyond this waits on disk


def _export_format(params: dict[str, Any]) -> tuple[str, bool]:
    fmt = str(params.get("format") or "parquet")
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    checksum = params.get("checksum")
    if checksum not in (None, "", "sha256"):
        raise InvalidInput(f"checksum must be 'sha256', got {checksum!r}")
    return fmt, checksum == "sha256"


def _precomputed(chunks: Iterator[bytes]) -> tuple[Any, int, str]:
    """The body in a spooled file (memory up to SPOOL_MEMORY_BYTES), its size and SHA-256."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        spool.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    spool.seek(0)
    return spool, size, digest.hexdigest()


def _spooled(spool: Any) -> Iterator[bytes]:
    try:
        while chunk := spool.read(2**20):
            yield chunk
    finally:
        spool.close()


def _stream(
    request: Request, req: ExportRequest, fmt: str = "parquet", checksum: bool = False
) -> StreamingResponse:
    """Plan the export on a connection of its own and stream it.

    At most ``export_max_streams`` streams per process hold a connection (503 with
    Retry-After past it); a client that reads nothing for ``idle_in_transaction_timeout_ms``
    loses its stream (the session's idle_in_transaction_session_timeout ends the transaction
    on the server's side too), and the transaction, connection and slot end as soon as the
    response is over, also when the client went away.
    """
    settings = request.app.state.settings
    if fmt == "neuco-csv":
        req = csv_request(req)
    slots: threading.BoundedSemaphore = request.app.state.export_slots
    if not slots.acquire(blocking=False):
        raise ExportBusy(
            f"{settings.export_max_streams} exports are streaming from this server; retry shortly"
        )
    try:
        holder = connect(
            settings, options=api_session_options(settings), application_name="embcat-export"
        )
        conn = holder.__enter__()
    except BaseException:
        slots.release()
        raise
    try:
        plan: ExportPlan = plan_export(conn, req)
    except BaseException as exc:
        try:
            holder.__exit__(type(exc), exc, exc.__traceback__)
        finally:
            slots.release()
        raise
    chunks = stream_csv(conn, plan) if fmt == "neuco-csv" else stream_export(conn, plan)
    done = threading.Lock()

    def cleanup() -> None:
        if not done.acquire(blocking=False):
            return
        try:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # the generator's finally: ROLLBACK of the export transaction
        except Exception:  # the connection may be gone already; closing it is what counts
            log.debug("closing an export stream", exc_info=True)
        finally:
            try:
                holder.__exit__(None, None, None)
            except Exception:
                log.debug("closing an export connection", exc_info=True)
            slots.release()

    suffix = "csv" if fmt == "neuco-csv" else "parquet"
    name = f"{req.collection_id}-{req.dtype}.{suffix}"
    headers = {
        "Content-Disposition": f'attachment; filename="{quote(name, safe="")}"',
        "Embcat-As-Of": str(plan.as_of),
        "Embcat-Rows": str(plan.rows),
        "Embcat-More": "true" if plan.more else "false",
        "Embcat-Dtype": req.dtype,
        "Embcat-Columns": req.columns,
        "Embcat-Order": req.resolved_order(),
        "Embcat-Vector-Layout": req.vector_layout,
    }
    media = CSV_MEDIA_TYPE if fmt == "neuco-csv" else PARQUET_MEDIA_TYPE
    if checksum or req.limit is not None:
        # Parts and requested checksums are built first: the digest goes in the headers
        # (uvicorn sends no HTTP trailers), and errors still get their 4xx status.
        try:
            spool, size, hexdigest = _precomputed(chunks)
        finally:
            cleanup()
        b64 = base64.b64encode(bytes.fromhex(hexdigest)).decode()
        headers.update(
            {
                "Content-Length": str(size),
                "Embcat-Sha256": hexdigest,
                "Repr-Digest": f"sha-256=:{b64}:",
            }
        )
        return StreamingResponse(_spooled(spool), media_type=media, headers=headers)
    stall_ms = settings.idle_in_transaction_timeout_ms
    return _ExportResponse(
        chunks,
        cleanup,
        stall_s=stall_ms / 1000 if stall_ms > 0 else None,
        media_type=media,
        headers=headers,
    )


async def export_get(request: Request, collection_id: str) -> StreamingResponse:
    params = dict(request.query_params)
    req = _export_request(collection_id, params, request_base_url(request))
    fmt, checksum = _export_format(params)
    return await run_in_threadpool(_stream, request, req, fmt, checksum)


async def export_post(
    request: Request,
    collection_id: str,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> StreamingResponse:
    params = {k: v for k, v in (body or {}).items() if v is not None}
    req = _export_request(collection_id, params, request_base_url(request))
    fmt, checksum = _export_format(params)
    return await run_in_threadpool(_stream, request, req, fmt, checksum)


def build_router(ctx: FeatureContext) -> APIRouter:
    """The export routes of one app (read scope: an export only reads)."""
    router = APIRouter(tags=["Exchange"], dependencies=[ctx.read()])
    router.add_api_route(
        EXPORT_PATH,
        export_get,
        methods=["GET"],
        summary="Export a search of the collection as stac-geoparquet with the vectors",
        response_class=StreamingResponse,
    )
    router.add_api_route(
        EXPORT_PATH,
        export_post,
        methods=["POST"],
        summary="Export a search (JSON body, as POST /search) as stac-geoparquet with the vectors",
        response_class=StreamingResponse,
    )
    return router
