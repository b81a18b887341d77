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

import hashlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from embcat.catalog.errors import InvalidInput, translated
from embcat.catalog.exchange_format import DATETIME_COLUMNS, read_metadata
from embcat.catalog.export_plan import (
    ExportPlan,
    ExportRequest,
    ExportSummary,
    _base_where,
    _from,
    _has_search,
    plan_export,
)
from embcat.catalog.export_rows import _batch_table, _select
from embcat.catalog.quantize import values_of

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
]


class _Sink:
    """A write-only file object whose bytes are taken out after each row group, or handed
    to ``emit`` as the writer produces them (a file: no row group's bytes held)."""

    def __init__(self, emit: Callable[[bytes], None] | None = None) -> None:
        self.chunks: list[bytes] = []
        self.closed = False
        self.position = 0
        self.emit = emit

    def write(self, data: bytes) -> int:
        if self.emit is not None:
            self.emit(data)
            size = len(memoryview(data))
        else:
            b = bytes(data)
            self.chunks.append(b)
            size = len(b)
        self.position += size
        return size

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take_chunks(self) -> list[bytes]:
        out, self.chunks = self.chunks, []
        return out

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet leaf column paths (``embedding.list.element``): what compression is keyed by."""
    buf = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buf)
    meta = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
    return [meta.column(i).path for i in range(len(meta))]


def _writer(sink: Any, schema: pa.Schema, dtype: str) -> pq.ParquetWriter:
    """The Parquet writer of an export: zstd for the item columns; the vectors plain and
    uncompressed (float noise does not compress; int8 vectors zstd to ~0.9 B a value),
    without statistics or dictionary (min/max of vectors are no use to a reader, and each
    costs a pass); ids DELTA_BYTE_ARRAY (consecutive ids share their prefix: ~0.1 B a row
    instead of ~2 B with zstd alone). Keys are Parquet leaf paths: a top-level name does
    not reach nested columns (``links.list.element.href``)."""
    compression = {
        path: "zstd" if dtype == "int8" or path.split(".")[0] != "embedding" else "none"
        for path in _leaf_paths(schema)
    }
    # PLAIN list vectors: BYTE_STREAM_SPLIT writes float16 faster, but DuckDB reads it only
    # for 4- and 8-byte values (FLOAT, DOUBLE, INT32, INT64).
    dictionary = [c for c in ("type", "stac_version", "collection") if c in schema.names]
    return pq.ParquetWriter(
        sink,
        schema,
        compression=compression,
        use_dictionary=dictionary or False,
        column_encoding={"id": "DELTA_BYTE_ARRAY"},
        write_statistics=["id", "datetime"],
        store_schema=True,
    )


def _order_by(plan: ExportPlan) -> sql.Composable:
    if plan.request.resolved_order() == "hilbert":
        # PostGIS sorts geometries along a Hilbert curve of their bounding boxes' centres
        return sql.SQL(" ORDER BY i.geometry, i.id")
    return sql.SQL(" ORDER BY i.id")


def _index_order(conn: psycopg.Connection, plan: ExportPlan) -> None:
    """A whole collection in Hilbert order: read the items in the order of
    ``items_export_order_idx`` (collection_id, geometry, id) and fetch each vector by the
    embeddings' primary key (a nested loop keeps that order) instead of sorting the wide
    rows (which spilled ~2 KB a row to disk and took longer than reading them). Left to the
    planner when a search narrows the rows (the GiST or datetime index then leads)."""
    if plan.request.resolved_order() != "hilbert" or _has_search(plan.request):
        return
    for setting in ("enable_sort", "enable_hashjoin", "enable_mergejoin"):
        conn.execute(sql.SQL("SET LOCAL {} = off").format(sql.Identifier(setting)))
    conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")


def _copy_query(plan: ExportPlan) -> tuple[sql.Composed, list[str]]:
    req = plan.request
    select, types = _select(plan)
    query = sql.SQL("COPY ({sel} FROM {src} WHERE {w}{order}{lim}) TO STDOUT (FORMAT BINARY)")
    return query.format(
        sel=select,
        src=_from(plan.space),
        w=_base_where(req, plan.space, plan.as_of),
        order=_order_by(plan),
        lim=sql.SQL(" LIMIT {}").format(sql.Literal(req.limit)) if req.limit else sql.SQL(""),
    ), types


_DONE = object()


class _Reader(threading.Thread):
    """Reads the export's binary COPY and builds Arrow record batches (``batch_size`` rows)
    gathered into row groups of about ``row_group_bytes``, ahead of the writer.

    It reads row group k+1 while the caller's thread encodes row group k as Parquet
    (pyarrow and the socket reads release the GIL). A group is started only when one of
    two slots is free (``done()`` frees the slot of a group once it is written), so at most
    two row groups are in memory, whatever the result size. ``groups()`` yields
    ``(batches, last id)``.
    """

    def __init__(self, conn: psycopg.Connection, plan: ExportPlan, depth: int = 2) -> None:
        super().__init__(name="embcat-export-reader", daemon=True)
        self.conn, self.plan = conn, plan
        self.out: queue.Queue[Any] = queue.Queue()
        self.slots = threading.Semaphore(depth)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def _slot(self) -> bool:
        while not self.stop.is_set():
            if self.slots.acquire(timeout=0.2):
                return True
        return False

    def done(self) -> None:
        """The consumer has written a group: its slot is free."""
        self.slots.release()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        size = self.plan.request.batch_size
        limit = self.plan.request.row_group_bytes
        query, types = _copy_query(self.plan)
        group: list[pa.RecordBatch] = []
        nbytes = 0
        last = ""
        # Full-profile batches (links, JSON kinds, assets) are built on a second thread
        # while this one reads (and psycopg parses) the next rows: the COPY's waits for the
        # server overlap the building. Minimal batches are too cheap to pay the hand-over.
        pending: deque[tuple[Future[pa.RecordBatch], str]] = deque()
        pool = None
        if self.plan.request.columns == "full":
            pool = ThreadPoolExecutor(1, thread_name_prefix="embcat-export-build")

        def build(rows: list[tuple[Any, ...]]) -> Future[pa.RecordBatch]:
            if pool is not None:
                return pool.submit(_batch_table, self.plan, rows)
            done: Future[pa.RecordBatch] = Future()
            done.set_result(_batch_table(self.plan, rows))
            return done

        def settle(keep: int) -> None:
            """Take built batches in order, leaving at most ``keep`` still being built."""
            nonlocal group, nbytes, last
            while len(pending) > keep:
                future, last = pending.popleft()
                batch = future.result()
                group.append(batch)
                nbytes += batch.nbytes
                if nbytes >= limit:
                    self._put((group, last))
                    group, nbytes = [], 0
                    self._slot()

        try:
            self._slot()
            with self.conn.cursor().copy(query) as copy:
                copy.set_types(types)
                rows: list[tuple[Any, ...]] = []
                for row in copy.rows():
                    # Once stopped, drain: leaving the COPY early leaves the connection
                    # busy; cancel() makes the server end it with an error soon.
                    if self.stop.is_set():
                        continue
                    rows.append(row)
                    if len(rows) >= size:
                        pending.append((build(rows), rows[-1][0]))
                        rows = []
                        settle(1)
                if rows and not self.stop.is_set():
                    pending.append((build(rows), rows[-1][0]))
            if not self.stop.is_set():
                settle(0)
                if group:
                    self._put((group, last))
        except BaseException as exc:  # handed to the consuming thread
            if not self.stop.is_set():
                self.error = exc
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if not self.stop.is_set():
                self._put(_DONE)

    def groups(self) -> Iterator[tuple[list[pa.RecordBatch], str]]:
        while True:
            item = self.out.get()
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def cancel(self) -> None:
        """Stop early (the consumer went away): cancel the COPY and wait for the thread."""
        if not self.is_alive():
            return
        self.stop.set()
        self.conn.cancel_safe(timeout=5.0)
        self.join(timeout=30.0)


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
    writer = _writer(sink, plan.schema, plan.request.dtype)
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


def _write_with_checksum(
    path: Path, produce: Callable[[Callable[[bytes], None]], Iterator[bytes]]
) -> tuple[int, str]:
    """Write what ``produce(emit)`` emits and yields to ``path`` atomically (a ``.part``
    file renamed when complete) and the SHA-256 beside it; returns the bytes written and
    the hex digest."""
    tmp = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    total = 0
    try:
        with open(tmp, "wb") as fh:

            def emit(chunk: bytes) -> None:
                nonlocal total
                fh.write(chunk)
                digest.update(chunk)
                total += len(memoryview(chunk))

            for chunk in produce(emit):
                if chunk:
                    emit(chunk)
        write_checksum(path, digest.hexdigest())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return total, digest.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_checksum(path: Path, hexdigest: str) -> Path:
    """``<path>.sha256`` holding ``<hex>  <file name>`` (what ``sha256sum -c`` checks)."""
    side = checksum_path(path)
    tmp = side.with_name(side.name + ".part")
    tmp.write_text(f"{hexdigest}  {path.name}\n")
    tmp.replace(side)
    return side


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
