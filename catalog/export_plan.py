"""Planning an export (catalog/export.py): the request, its validation, the snapshot
(``as_of``), the row count, the item shape and the int8 statistics; everything the file's
schema and metadata depend on is fixed here, before the first byte."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from embcat.catalog import pgbinary
from embcat.catalog.changes import safe_high_water
from embcat.catalog.errors import DatabaseUnavailable, InvalidInput, NotFound, translated
from embcat.catalog.export_schema import schema_of
from embcat.catalog.export_shape import ShapeDetails, item_shape, keep_shape
from embcat.catalog.filters import Filter
from embcat.catalog.quantize import (
    BINARY_QUANTIZATION,
    Quantization,
    RangeStats,
    check_dtype,
    check_layout,
    int8_quantization,
)
from embcat.catalog.search import SearchQuery
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import export_reads
from embcat.catalog.store.spaces import Space, get_space

MAX_WAIT_FOR_WRITERS_S = 10.0
PROFILES = ("full", "minimal")
ORDERS = ("hilbert", "id")
ROW_GROUP_BYTES = 128 * 2**20  # what readers handle well (geo-embeddings best practices)
# PostgreSQL types of the extracted property / asset field columns, per kind (binary COPY)
KIND_PG_TYPES = {
    "string": "text",
    "int64": "int8",
    "float64": "float8",
    "bool": "bool",
    "list_string": "text",
    "json": "text",
    "nested": "text",
}


@dataclass
class ExportRequest:
    """What to export: a collection, a STAC search over it, a dtype, and resume points."""

    collection_id: str
    dtype: str = "float32"
    query: SearchQuery = field(default_factory=SearchQuery)
    after: str | None = None
    as_of: int | None = None
    limit: int | None = None
    batch_size: int = 2048
    base_url: str | None = None
    columns: str = "full"
    order: str | None = None  # None: hilbert for a whole export, id when paging
    row_group_bytes: int = ROW_GROUP_BYTES
    vector_layout: str = "bytes"  # catalog.quantize.LAYOUTS

    def resolved_order(self) -> str:
        if self.order is not None:
            return self.order
        return "id" if self.after is not None or self.limit is not None else "hilbert"

    def describe(self) -> dict[str, Any]:
        """The query part recorded in the file (JSON-able)."""
        q = {
            k: v
            for k, v in asdict(self.query).items()
            if v not in (None, [], {}) and k not in ("limit", "token", "collections", "fields")
        }
        out: dict[str, Any] = {"collection": self.collection_id, "search": q}
        if self.after is not None:
            out["after"] = self.after
        if self.limit is not None:
            out["limit"] = self.limit
        out["columns"] = self.columns
        out["order"] = self.resolved_order()
        out["vector_layout"] = self.vector_layout
        return out


@dataclass
class ExportPlan:
    request: ExportRequest
    space: Space
    collection: dict[str, Any]
    as_of: int
    rows: int
    more: bool
    properties: list[tuple[str, str, str]]  # (property name, column name, kind)
    assets: dict[str, dict[str, str]]  # asset key -> field -> kind
    quantization: Quantization | None
    schema: pa.Schema
    details: ShapeDetails = field(default_factory=lambda: ShapeDetails())
    # constant columns built once per batch length (catalog.export_rows)
    constant_columns: dict[tuple[str, int], pa.Array] = field(
        default_factory=dict, repr=False, compare=False
    )


@dataclass
class ExportSummary:
    rows: int
    bytes: int
    seconds: float
    as_of: int
    more: bool
    last_id: str | None
    sha256: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


# --------------------------------------------------------------------------- planning


def _base_where(req: ExportRequest, space: Space, as_of: int) -> sql.Composable:
    parts: list[sql.Composable] = [
        sql.SQL("i.collection_id = {}").format(sql.Literal(req.collection_id)),
        sql.SQL("i.change_seq <= {}").format(sql.Literal(as_of)),
    ]
    q = SearchQuery(**{**asdict(req.query), "collections": None, "sortby": None, "token": None})
    parts.append(Filter.from_search(q).for_items())
    if req.after is not None:
        parts.append(sql.SQL("i.id > {}").format(sql.Literal(req.after)))
    return sql.SQL(" AND ").join(parts)


def _has_search(req: ExportRequest) -> bool:
    q = req.query
    return any(
        v not in (None, [], {}, "")
        for v in (q.ids, q.bbox, q.intersects, q.datetime, q.filter, q.query, q.q)
    )


def _resolve_as_of(conn: psycopg.Connection, collection_id: str, requested: int | None) -> int:
    deadline = time.monotonic() + MAX_WAIT_FOR_WRITERS_S
    while True:
        high, pending = safe_high_water(conn, collection_id)
        if high is not None:
            break
        if time.monotonic() > deadline:
            raise DatabaseUnavailable(
                f"{pending} transaction(s) are writing items; retry the export shortly"
            )
        time.sleep(0.2)
    if requested is None:
        return high
    if requested < 0 or requested > high:
        raise InvalidInput(f"as_of must be in 0..{high}, got {requested}")
    return requested


def _vector_batches(
    conn: psycopg.Connection, space: Space, where: sql.Composable, batch_size: int
) -> Iterator[np.ndarray]:
    """Only the vectors (for the int8 statistics pass), through one binary COPY. Every row
    is the same size (one field: its length, pgvector's 4-byte header, D values), so the
    raw stream is read as a numpy record array, ``batch_size`` rows or more at a time,
    without a Python object per row."""
    query = export_reads.vectors_copy(space, where)
    record = pgbinary.copy_row_dtype(space.dimensions, space.storage)
    size = pgbinary.value_size(space.dimensions, space.storage)
    buf = bytearray()
    skip = len(pgbinary.COPY_HEADER)

    def take(rows: int) -> np.ndarray:
        block = bytes(buf[: rows * record.itemsize])
        del buf[: rows * record.itemsize]
        arr = np.frombuffer(block, dtype=record)
        if np.any(arr["fields"] != 1) or np.any(arr["size"] != size):
            raise RuntimeError("unexpected row in the binary COPY of the vectors")
        return arr["v"].astype(np.float32)

    with conn.cursor().copy(query) as copy:
        for chunk in copy:
            buf += chunk
            if skip:
                cut = min(skip, len(buf))
                del buf[:cut]
                skip -= cut
            rows = len(buf) // record.itemsize
            if rows >= batch_size:
                yield take(rows)
    rows = len(buf) // record.itemsize
    if rows:
        yield take(rows)
    if bytes(buf) not in (b"", b"\xff\xff"):  # what is left is the trailer (-1 as int16)
        raise RuntimeError("the binary COPY of the vectors ended mid-row")


def plan_export(conn: psycopg.Connection, req: ExportRequest) -> ExportPlan:
    """Validate the request and fix everything the file's schema and metadata depend on."""
    dtype = check_dtype(req.dtype)
    if req.limit is not None and req.limit < 1:
        raise InvalidInput(f"limit must be >= 1, got {req.limit}")
    if not 1 <= req.batch_size <= 100_000:
        raise InvalidInput(f"batch_size must be in 1..100000, got {req.batch_size}")
    if req.columns not in PROFILES:
        raise InvalidInput(f"columns must be one of {list(PROFILES)}, got {req.columns!r}")
    if req.order is not None and req.order not in ORDERS:
        raise InvalidInput(f"order must be one of {list(ORDERS)}, got {req.order!r}")
    if req.order == "hilbert" and (req.after is not None or req.limit is not None):
        raise InvalidInput(
            "after and limit page an export in id order; use order=id (or leave order out)"
        )
    check_layout(req.vector_layout)
    if req.row_group_bytes < 1:
        raise InvalidInput(f"row_group_bytes must be >= 1, got {req.row_group_bytes}")
    with translated():
        conn.execute("SET LOCAL jit = off")  # JIT compiles the jsonb aggregates for seconds
        row = store_collections.get(conn, req.collection_id)
        if row is None:
            raise NotFound(f"collection {req.collection_id!r} does not exist")
        if row.space_id is None:
            raise NotFound(f"collection {req.collection_id!r} has no embeddings yet")
        collection, space = row.stac, get_space(conn, row.space_id)
        as_of = _resolve_as_of(conn, req.collection_id, req.as_of)
        where = _base_where(req, space, as_of)
        part: sql.Composable
        if req.limit is not None:
            # A part: count at most limit + 1 rows, and take the schema (and the int8
            # statistics) from this part's rows only, so each part costs O(limit).
            remaining = export_reads.count(conn, space.id, where, at_most=req.limit + 1)
            part = export_reads.first_rows(space.id, where, req.limit)
        else:
            remaining = export_reads.count(conn, space.id, where)
            part = where
        rows = remaining if req.limit is None else min(req.limit, remaining)
        properties, assets, details, keep = item_shape(
            conn, req.collection_id, req.columns, _has_search(req), part
        )
        quant: Quantization | None = None
        if dtype == "int8":
            stats = RangeStats(space.dimensions)
            for block in _vector_batches(conn, space, part, req.batch_size):
                stats.update(block)
            quant = int8_quantization(stats)
        elif dtype == "binary":
            quant = BINARY_QUANTIZATION
        conn.rollback()  # end the planning transaction; streaming opens its own
        if keep:
            keep_shape(conn, req.collection_id, properties, assets, details)
            conn.commit()
    plan = ExportPlan(
        request=req,
        space=space,
        collection=collection,
        as_of=as_of,
        rows=rows,
        more=req.limit is not None and remaining > req.limit,
        properties=properties,
        assets=assets,
        quantization=quant,
        schema=pa.schema([]),
        details=details,
    )
    plan.schema = schema_of(plan)
    return plan
