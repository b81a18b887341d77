"""The publish's load: a reader thread and the COPY of chunks into the staging table.

A reader thread reads, validates (catalog.publish_rows) and encodes (catalog.publish_copy)
record batches into a bounded queue while this thread COPYs a chunk (about CHUNK_BYTES of
vectors) into the TEMP staging table and merges it (catalog.publish_merge). So Python and
the server work at the same time, and memory is bounded by the record batch, never by the
input size.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import psycopg
from psycopg.copy import QueuedLibpqWriter

from embcat.catalog import pgbinary
from embcat.catalog.errors import InvalidInput
from embcat.catalog.item_shape import ItemTemplate
from embcat.catalog.publish_copy import RowEncoder
from embcat.catalog.publish_input import PublishContext, iter_batches
from embcat.catalog.publish_merge import MergeState, merge_chunk
from embcat.catalog.publish_rows import Problems, union, validate_batch

BATCH_BYTES = 16 << 20  # vector bytes per record batch (memory is bounded by it)
CHUNK_BYTES = 64 << 20  # vector bytes staged and merged at a time
QUEUED_BATCHES = 8  # encoded batches the reader thread may run ahead
_DONE = object()


def _produce(
    ctx: PublishContext,
    template: ItemTemplate,
    problems: Problems,
    out: queue.Queue[Any],
    stop: threading.Event,
) -> None:
    """Read, validate and encode record batches into ``out`` (runs in its own thread).

    Puts ``(rows, COPY bytes or None, extent or None)`` per batch (None once any row is
    bad: from then on batches are only validated, to name more offending rows), then
    ``_DONE``, or the exception that stopped it. Returns early when ``stop`` is set.
    """

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        dims, storage = ctx.manifest.encoder.dimensions, ctx.storage
        batch_rows = int(min(16384, max(256, BATCH_BYTES // (4 * dims))))
        encoder = RowEncoder(dims, storage, template)
        for path in ctx.shard_paths:
            offset = 0
            for batch in iter_batches(path, batch_rows):
                if stop.is_set():
                    return
                checked = validate_batch(batch, path.name, offset, dims, storage, problems)
                data, extent = None, None
                if checked is not None and problems.count == 0:
                    stored, extent = checked
                    # a memoryview: the writer slices it into 128 kB pieces without copies
                    data = encoder.encode(batch, stored)
                offset += batch.num_rows
                if not put((batch.num_rows, data, extent)) or problems.full:
                    break
            if problems.full:
                break
        put(_DONE)
    except BaseException as exc:  # noqa: BLE001 - handed to the loading thread
        put(exc)


def load(conn: psycopg.Connection, state: MergeState, template: ItemTemplate) -> int:
    """Stream the shards into the catalogue in chunks; return the number of input rows.

    A reader thread validates and encodes record batches while this thread COPYs a chunk
    (about CHUNK_BYTES of vectors) into the TEMP staging table and merges it into items
    and embeddings; the staging table is emptied after each merge. So the database and
    Python work at the same time, and neither memory nor temporary disk grows with the
    input. Everything stays in the caller's transaction: a bad row in the last chunk
    still leaves the catalogue untouched.
    """
    from tqdm import tqdm

    ctx = state.ctx
    dims = ctx.manifest.encoder.dimensions
    chunk_rows = max(1000, CHUNK_BYTES // (4 * dims))
    problems = Problems()
    q: queue.Queue[Any] = queue.Queue(maxsize=QUEUED_BATCHES)
    stop = threading.Event()
    reader = threading.Thread(
        target=_produce,
        args=(ctx, template, problems, q, stop),
        name="publish-reader",
        daemon=True,
    )
    rows = 0
    bar = tqdm(
        total=ctx.manifest.rows, unit="row", unit_scale=True, disable=not ctx.progress,
        desc="publish", leave=False,
    )  # fmt: skip
    reader.start()
    try:
        done = False
        while not done:
            staged = 0
            extent: list[Any] | None = None
            t = time.perf_counter()
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY publish_staging FROM STDIN (FORMAT BINARY)",
                    writer=QueuedLibpqWriter(cur),  # sends from a thread while we wait
                ) as copy,
            ):
                copy.write(pgbinary.COPY_HEADER)
                while staged < chunk_rows:
                    item = q.get()
                    if item is _DONE:
                        done = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    n, data, batch_extent = item
                    rows += n
                    bar.update(n)
                    if data is not None and not problems.count:
                        copy.write(data)
                        staged += n
                        extent = union(extent, batch_extent)
                copy.write(pgbinary.COPY_TRAILER)
            ctx.timings["stage_s"] += time.perf_counter() - t
            if problems.count:
                continue  # drain the reader: it names up to MAX_REPORTED bad rows
            if staged:
                assert extent is not None
                merge_chunk(conn, state, staged, extent)
        if problems.count:
            raise InvalidInput(
                f"invalid input, nothing was published ({problems.count}"
                f"{'+' if problems.full else ''} bad rows); first offending rows:\n  "
                + "\n  ".join(problems.rows)
            )
    finally:
        stop.set()
        reader.join()
        bar.close()
    return rows
