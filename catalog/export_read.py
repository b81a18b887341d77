"""Reading an export: the binary COPY query (in index order for a whole collection) and the
reader thread that turns its rows into Arrow row groups ahead of the writer, at most two
row groups in memory."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from embcat.catalog.export_plan import ExportPlan, _base_where, _has_search
from embcat.catalog.export_rows import _batch_table, _select
from embcat.catalog.store import export_reads


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
    where = _base_where(req, plan.space, plan.as_of)
    query = export_reads.rows_copy(select, plan.space.id, where, _order_by(plan), req.limit)
    return query, types


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
