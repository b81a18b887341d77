"""Bulk export: a STAC search of one collection as a stac-geoparquet file with the vectors.

The rows come out of the database through one binary ``COPY (SELECT ...) TO STDOUT``; a
reader thread turns them into Arrow record batches (column-wise) while the caller's thread
encodes the previous row group as Parquet, so memory depends on the row-group size
(``row_group_bytes``, ~128 MB by default), never on the size of the result.

Profiles (``columns``): ``full`` (default), the stac-geoparquet item columns below plus the
vector; ``minimal``, the vectors only: ``id``, ``geometry``, ``datetime``, ``embedding``, with
the collection's metadata in the file's key-value metadata. Rows are in spatial (Hilbert)
order (PostGIS's own geometry sort order, ties by id) unless the request pages with
``after``/``limit`` or asks ``order=id``. Layout (docs/exchange.md):

- stac-geoparquet item columns: ``type``, ``stac_version``, ``stac_extensions``, ``id``,
  ``geometry`` (WKB, GeoParquet 1.1 ``geo`` metadata, OGC:CRS84), ``bbox`` (struct xmin,
  ymin, xmax, ymax; declared as the geometry's covering), ``collection``, ``links`` (list of
  struct rel/href/type/title), ``assets`` (struct per asset key), ``datetime``,
  ``start_datetime``, ``end_datetime`` (timestamp[us, UTC]) and one top-level column per
  property (typed from the values in the result: string, int64, float64, bool,
  list<string>, or JSON text for objects and mixed types);
- ``embedding``: ``fixed_size_binary[W]`` holding the D values of the dtype little-endian
  (``vector_layout=bytes``, the default; W = 4D, 2D, D or ceil(D/8) bytes) or
  ``fixed_size_list<float32|float16|int8>[D]`` (``vector_layout=list``; binary stays
  ``fixed_size_binary[ceil(D/8)]``); the ``embeddings`` metadata says how to decode;
- key-value metadata ``geo``, ``stac-geoparquet`` (version + the collection JSON),
  ``embeddings`` (model, dimensions, dtype, quantisation and how to de-quantise, source)
  and ``embcat`` (space, dtype, query, ``as_of``, ``emb:quantization``, column map).

An export is deterministic for a given query and ``as_of``: only rows whose last change is
``<= as_of`` are included, in a fixed order, so the same request gives the same bytes; a
download in id order can be resumed at the row level with ``after=<last id received>``
and the same ``as_of``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from embcat.catalog.errors import translated
from embcat.catalog.exchange_format import DATETIME_COLUMNS, read_metadata
from embcat.catalog.export_csv import (
    CSV_MEDIA_TYPE,
    csv_request,
    export_csv_to_file,
    stream_csv,
)
from embcat.catalog.export_plan import (
    ExportPlan,
    ExportRequest,
    ExportSummary,
    plan_export,
)
from embcat.catalog.export_read import _copy_query, _index_order, _Reader
from embcat.catalog.export_write import (
    _Sink,
    _write_with_checksum,
    _writer,
    checksum_path,
    write_checksum,
)

__all__ = [
    "CSV_MEDIA_TYPE",
    "DATETIME_COLUMNS",
    "ExportPlan",
    "ExportRequest",
    "ExportSummary",
    "checksum_path",
    "csv_request",
    "export_csv_to_file",
    "export_to_file",
    "plan_export",
    "read_metadata",
    "stream_csv",
    "stream_export",
    "write_checksum",
    "_Sink",
    "_copy_query",
    "_index_order",
]


def stream_export(
    conn: psycopg.Connection,
    plan: ExportPlan,
    on_batch: Callable[[int, int, str], None] | None = None,
    emit: Callable[[bytes], None] | None = None,
) -> Iterator[bytes]:
    """The parquet file's bytes, one row group at a time (``on_batch(rows, bytes, last_id)``);
    with ``emit``, the bytes go to ``emit`` as they are encoded and nothing is yielded but
    empty chunks (so no row group's encoded bytes are held).

    Runs a read-only REPEATABLE READ transaction on ``conn`` for the whole stream, so the
    rows and the planned schema come from one snapshot bounded by ``plan.as_of``. Record
    batches of ``batch_size`` rows are gathered into row groups of about
    ``row_group_bytes`` (Arrow in-memory size: the vectors' size in the file).
    """
    sink = _Sink(emit)
    writer = _writer(sink, plan.schema, plan.request.dtype, plan.request.columns)
    with translated():
        conn.rollback()
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL jit = off")
        conn.execute("SET LOCAL work_mem = '64MB'")  # the sort of a whole export
        _index_order(conn, plan)
        reader = _Reader(conn, plan)
        reader.start()
        try:
            for group, last_id in reader.groups():
                chunks = _flush(writer, sink, group, last_id, on_batch)
                reader.done()
                yield from chunks
            reader.join()
            start = sink.position
            writer.close()
            tail = sink.take()
            if on_batch is not None:
                on_batch(0, sink.position - start, "")
            yield tail
        finally:
            reader.cancel()
            conn.rollback()


def _flush(
    writer: pq.ParquetWriter,
    sink: _Sink,
    group: list[pa.RecordBatch],
    last_id: str,
    on_batch: Callable[[int, int, str], None] | None,
) -> list[bytes]:
    """Write ``group`` as one row group; its bytes (as the writer wrote them)."""
    table = pa.Table.from_batches(group)
    rows = table.num_rows
    group.clear()  # the batches go with the table once it is written
    start = sink.position
    writer.write_table(table, row_group_size=max(rows, 1))
    del table
    chunks = sink.take_chunks()  # as written: no second copy of the row group
    if on_batch is not None:
        on_batch(rows, sink.position - start, last_id)
    return chunks


def export_to_file(
    conn: psycopg.Connection,
    req: ExportRequest,
    path: Path,
    progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Write the export to ``path`` (atomically: a temporary file renamed when complete) and
    its SHA-256 beside it in ``<path>.sha256`` (``sha256sum -c`` format)."""
    started = time.perf_counter()
    plan = plan_export(conn, req)
    last: list[str] = []

    def seen(rows: int, nbytes: int, last_id: str) -> None:
        if last_id:
            last[:] = [last_id]
        if progress is not None:
            progress(rows, nbytes)

    total, hexdigest = _write_with_checksum(
        path, lambda emit: stream_export(conn, plan, seen, emit=emit)
    )
    return ExportSummary(
        rows=plan.rows,
        bytes=total,
        seconds=time.perf_counter() - started,
        as_of=plan.as_of,
        more=plan.more,
        last_id=last[0] if last else None,
        sha256=hexdigest,
    )
