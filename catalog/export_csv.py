"""The NeuCo-Bench CSV form of an export: header ``id,0,1,...,D-1``, one row per item
(float32 values), same snapshot, reader and memory bound as the Parquet export."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow as pa

from embcat.catalog.errors import InvalidInput, translated
from embcat.catalog.export_plan import (
    ExportPlan,
    ExportRequest,
    ExportSummary,
    plan_export,
)
from embcat.catalog.export_read import _Reader
from embcat.catalog.export_write import _write_with_checksum
from embcat.catalog.quantize import values_of

# --------------------------------------------------------------------------- NeuCo-Bench CSV

CSV_MEDIA_TYPE = "text/csv"


def csv_request(req: ExportRequest) -> ExportRequest:
    """The request behind a NeuCo-Bench CSV: vectors only, float32, one row per item by id."""
    if req.dtype not in ("float32", "float16"):
        raise InvalidInput("the NeuCo-Bench CSV holds float values; use dtype float32")
    return ExportRequest(
        collection_id=req.collection_id,
        dtype="float32",
        query=req.query,
        after=req.after,
        as_of=req.as_of,
        limit=req.limit,
        batch_size=req.batch_size,
        base_url=req.base_url,
        columns="minimal",
        order="id",
        row_group_bytes=min(req.row_group_bytes, 16 * 2**20),  # CSV has no row groups
        vector_layout=req.vector_layout,
    )


def stream_csv(conn: psycopg.Connection, plan: ExportPlan) -> Iterator[bytes]:
    """The export as the CSV NeuCo-Bench reads: header ``id,0,1,...,D-1``, one row per item
    (float32 values, shortest round-trip text). Same snapshot, reader and memory bound as
    :func:`stream_export`."""
    import pyarrow.csv as pacsv

    dims = plan.space.dimensions
    names = ["id", *map(str, range(dims))]
    yield (",".join(names) + "\n").encode()
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    with translated():
        conn.rollback()
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL jit = off")
        reader = _Reader(conn, plan)
        reader.start()
        try:
            for batch in _batches_of(reader):
                values = values_of(batch.column("embedding"), "float32", dims)
                table = pa.Table.from_arrays(
                    [batch.column("id"), *(pa.array(values[:, k]) for k in range(dims))],
                    names=names,
                )
                buf = pa.BufferOutputStream()
                pacsv.write_csv(table, buf, write_options=options)
                yield buf.getvalue().to_pybytes()
            reader.join()
        finally:
            reader.cancel()
            conn.rollback()


def _batches_of(reader: _Reader) -> Iterator[pa.RecordBatch]:
    for group, _last in reader.groups():
        yield from group
        group.clear()
        reader.done()


def export_csv_to_file(conn: psycopg.Connection, req: ExportRequest, path: Path) -> ExportSummary:
    """Write the NeuCo-Bench CSV to ``path`` (atomically) with ``<path>.sha256`` beside it."""
    started = time.perf_counter()
    plan = plan_export(conn, csv_request(req))
    total, hexdigest = _write_with_checksum(path, lambda _emit: stream_csv(conn, plan))
    return ExportSummary(
        rows=plan.rows,
        bytes=total,
        seconds=time.perf_counter() - started,
        as_of=plan.as_of,
        more=plan.more,
        last_id=None,
        sha256=hexdigest,
    )
