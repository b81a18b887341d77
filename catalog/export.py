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
import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
from psycopg import sql
from psycopg.types.json import Jsonb

from embcat.catalog.changes import safe_high_water
from embcat.catalog.errors import DatabaseUnavailable, InvalidInput, NotFound, translated
from embcat.catalog.quantize import (
    BINARY_QUANTIZATION,
    NUMPY_DTYPES,
    Quantization,
    RangeStats,
    array_of,
    arrow_type,
    check_dtype,
    check_layout,
    int8_quantization,
    quantize,
    values_of,
)
from embcat.catalog.search import SearchQuery, where_clause
from embcat.catalog.spaces import Space, get_space
from embcat.catalog.stac import (
    EXTENSION_SCHEMAS,
    GENERATED_RELS,
    SERVED_PREFIXES,
    SOURCE_RELS,
    source_uri,
    stac_version_for,
)

FORMAT_VERSION = "1"
META_KEY = b"embcat"
DATETIME_COLUMNS = ("datetime", "start_datetime", "end_datetime")
RESERVED = {
    "type",
    "stac_version",
    "stac_extensions",
    "id",
    "geometry",
    "bbox",
    "collection",
    "links",
    "assets",
    "embedding",
    *DATETIME_COLUMNS,
}
LINK_TYPE = pa.struct(
    [("rel", pa.string()), ("href", pa.string()), ("type", pa.string()), ("title", pa.string())]
)
BBOX_TYPE = pa.struct(
    [("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())]
)
KIND_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "list_string": pa.list_(pa.string()),
    "json": pa.string(),
}
MAX_WAIT_FOR_WRITERS_S = 10.0
PROFILES = ("full", "minimal")
ORDERS = ("hilbert", "id")
ROW_GROUP_BYTES = 128 * 2**20  # what readers handle well (geo-embeddings best practices)
EMBEDDINGS_KEY = b"embeddings"
# PostgreSQL types of the extracted property / asset field columns, per kind (binary COPY)
KIND_PG_TYPES = {
    "string": "text",
    "int64": "int8",
    "float64": "float8",
    "bool": "bool",
    "list_string": "text",
    "json": "text",
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
    parts.append(where_clause(q))
    if req.after is not None:
        parts.append(sql.SQL("i.id > {}").format(sql.Literal(req.after)))
    return sql.SQL(" AND ").join(parts)


def _from(space: Space) -> sql.Composable:
    return sql.SQL(
        "items i JOIN embeddings e ON e.collection_id = i.collection_id AND e.item_id = i.id"
        " AND e.space_id = {}"
    ).format(sql.Literal(space.id))


def _kind(types: list[str], integral: bool, str_arrays: bool) -> str:
    kinds = {t for t in types if t != "null"}
    if kinds == {"string"}:
        return "string"
    if kinds == {"number"}:
        return "int64" if integral else "float64"
    if kinds == {"boolean"}:
        return "bool"
    if kinds == {"array"} and str_arrays:
        return "list_string"
    return "json"


_KIND_AGG = sql.SQL(
    "jsonb_typeof({v}),"
    " bool_and(jsonb_typeof({v}) <> 'number' OR {v}::text ~ '^-?[0-9]{{1,15}}$'),"
    " bool_and(jsonb_typeof({v}) <> 'array'"
    " OR NOT jsonb_path_exists({v}, '$[*] ? (@.type() != \"string\")'))"
)


def _kinds(rows: list[tuple[Any, ...]]) -> dict[tuple[str, ...], str]:
    """Kind per key from ``(*key, jsonb type, integral, string arrays)`` groups."""
    seen: dict[tuple[str, ...], tuple[list[str], bool, bool]] = {}
    for *key, typ, integral, str_arrays in rows:
        types, ok_int, ok_arr = seen.get(tuple(key), ([], True, True))
        seen[tuple(key)] = (
            [*types, typ],
            ok_int and bool(integral),
            ok_arr and bool(str_arrays),
        )
    return {k: _kind(t, i, a) for k, (t, i, a) in seen.items()}  # in the database's order


def _discover(
    conn: psycopg.Connection, space: Space, where: sql.Composable
) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, str]]]:
    """Property columns and asset struct fields with their kinds, from the rows exported.

    One hash aggregate per (key, JSON type): no DISTINCT sort of every value.
    """
    prop_sql = sql.SQL(
        "SELECT p.key, {agg} FROM {src}, jsonb_each(i.properties) p WHERE {w}"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(agg=_KIND_AGG.format(v=sql.SQL("p.value")), src=sql.SQL("items i"), w=where)
    asset_sql = sql.SQL(
        "SELECT a.key, f.key, {agg} FROM {src}, jsonb_each(i.assets) a,"
        " jsonb_each(CASE WHEN jsonb_typeof(a.value) = 'object' THEN a.value ELSE '{{}}' END) f"
        " WHERE {w} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).format(agg=_KIND_AGG.format(v=sql.SQL("f.value")), src=sql.SQL("items i"), w=where)
    properties: list[tuple[str, str, str]] = []
    for (key,), kind in _kinds(conn.execute(prop_sql).fetchall()).items():
        if key in DATETIME_COLUMNS:
            continue
        column = f"properties.{key}" if key in RESERVED else key
        properties.append((key, column, kind))
    assets: dict[str, dict[str, str]] = {}
    for (akey, fkey), kind in _kinds(conn.execute(asset_sql).fetchall()).items():
        assets.setdefault(akey, {})[fkey] = kind
    return properties, assets


def _has_search(req: ExportRequest) -> bool:
    q = req.query
    return any(
        v not in (None, [], {}, "")
        for v in (q.ids, q.bbox, q.intersects, q.datetime, q.filter, q.query, q.q)
    )


def _known_shape(
    conn: psycopg.Connection, collection_id: str
) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, str]]] | None:
    """The shape kept by an earlier export, while no item was written since (else None)."""
    row = conn.execute(
        "SELECT s.properties, s.assets FROM export_shapes s WHERE s.collection_id = %s"
        " AND s.seq >= coalesce((SELECT max(change_seq) FROM items"
        " WHERE collection_id = %s), 0)",
        (collection_id, collection_id),
    ).fetchone()
    if row is None:
        return None
    props = [(p["name"], p["column"], p["kind"]) for p in row[0]]
    return props, dict(row[1])


def _keep_shape(
    conn: psycopg.Connection,
    collection_id: str,
    properties: list[tuple[str, str, str]],
    assets: dict[str, dict[str, str]],
) -> None:
    """Best-effort: a read-only database or role simply rediscovers next time."""
    seq = conn.execute(
        "SELECT coalesce(max(change_seq), 0) FROM items WHERE collection_id = %s",
        (collection_id,),
    ).fetchone()
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO export_shapes (collection_id, seq, properties, assets)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (collection_id) DO UPDATE SET"
                " seq = excluded.seq, properties = excluded.properties,"
                " assets = excluded.assets, updated_at = now()",
                (
                    collection_id,
                    seq[0] if seq else 0,
                    Jsonb([{"name": n, "column": c, "kind": k} for n, c, k in properties]),
                    Jsonb(assets),
                ),
            )
    except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege):
        pass


def _shape(
    conn: psycopg.Connection, req: ExportRequest, space: Space, part: sql.Composable
) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, str]], bool]:
    """Item columns of the export: none for ``minimal``; for ``full`` the collection's kept
    shape when still valid, else a discovery pass (over the whole collection when the
    request has no search, and kept for the next export; over the rows exported otherwise).
    """
    if req.columns == "minimal":
        return [], {}, False
    if _has_search(req):
        return (*_discover(conn, space, part), False)
    known = _known_shape(conn, req.collection_id)
    if known is not None:
        return (*known, False)
    whole = sql.SQL("i.collection_id = {}").format(sql.Literal(req.collection_id))
    return (*_discover(conn, space, whole), True)


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


_COPY_HEADER = 19  # binary COPY: signature (11 bytes), flags (4), header extension length (4)


def _vector_batches(
    conn: psycopg.Connection, space: Space, where: sql.Composable, batch_size: int
) -> Iterator[np.ndarray]:
    """Only the vectors (for the int8 statistics pass), through one binary COPY. Every row
    is the same size (one field: its length, pgvector's 4-byte header, D values), so the
    raw stream is read as a numpy record array, ``batch_size`` rows or more at a time,
    without a Python object per row."""
    template = sql.SQL(
        "COPY (SELECT {send}(e.{col}) FROM {src} WHERE {w}) TO STDOUT (FORMAT BINARY)"
    )
    query = template.format(
        send=sql.SQL(f"{space.storage}_send"),
        col=sql.Identifier(space.column),
        src=_from(space),
        w=where,
    )
    width = 2 if space.storage == "halfvec" else 4
    record = np.dtype(
        [
            ("fields", ">i2"),
            ("size", ">i4"),
            ("hdr", ">u4"),
            ("v", f">f{width}", (space.dimensions,)),
        ]
    )
    size = 4 + width * space.dimensions
    buf = bytearray()
    skip = _COPY_HEADER

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
        row = conn.execute(
            "SELECT stac, space_id FROM collections WHERE id = %s", (req.collection_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"collection {req.collection_id!r} does not exist")
        if row[1] is None:
            raise NotFound(f"collection {req.collection_id!r} has no embeddings yet")
        collection, space = row[0], get_space(conn, row[1])
        as_of = _resolve_as_of(conn, req.collection_id, req.as_of)
        where = _base_where(req, space, as_of)
        part: sql.Composable
        if req.limit is not None:
            # A part: count at most limit + 1 rows, and take the schema (and the int8
            # statistics) from this part's rows only, so each part costs O(limit).
            count_row = conn.execute(
                sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT {}) x").format(
                    _from(space), where, sql.Literal(req.limit + 1)
                )
            ).fetchone()
            part = sql.SQL(
                "{w} AND i.id IN (SELECT i.id FROM {src} WHERE {w} ORDER BY i.id LIMIT {n})"
            ).format(w=where, src=_from(space), n=sql.Literal(req.limit))
        else:
            count_row = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE {}").format(_from(space), where)
            ).fetchone()
            part = where
        remaining = int(count_row[0]) if count_row else 0
        rows = remaining if req.limit is None else min(req.limit, remaining)
        properties, assets, keep = _shape(conn, req, space, part)
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
            _keep_shape(conn, req.collection_id, properties, assets)
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
    )
    plan.schema = _schema(plan)
    return plan


def _asset_type(fields: dict[str, str]) -> pa.DataType:
    return pa.struct([(k, KIND_TYPES[v]) for k, v in sorted(fields.items())])


def _embedding_field(plan: ExportPlan) -> pa.Field:
    emb_meta = {}
    if plan.quantization is not None:
        emb_meta[b"emb:quantization"] = json.dumps(plan.quantization.as_stac()).encode()
    return pa.field(
        "embedding",
        arrow_type(plan.request.dtype, plan.space.dimensions, plan.request.vector_layout),
        nullable=False,
        metadata=emb_meta or None,
    )


def _schema(plan: ExportPlan) -> pa.Schema:
    ts = pa.timestamp("us", tz="UTC")
    if plan.request.columns == "minimal":
        return pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("geometry", pa.binary(), nullable=False),
                pa.field("datetime", ts),
                _embedding_field(plan),
            ],
            metadata=_metadata(plan),
        )
    fields = [
        pa.field("type", pa.string(), nullable=False),
        pa.field("stac_version", pa.string(), nullable=False),
        pa.field("stac_extensions", pa.list_(pa.string())),
        pa.field("id", pa.string(), nullable=False),
        pa.field("geometry", pa.binary(), nullable=False),
        pa.field("bbox", BBOX_TYPE, nullable=False),
        pa.field("collection", pa.string(), nullable=False),
        pa.field("links", pa.list_(LINK_TYPE)),
    ]
    if plan.assets:  # parquet cannot hold an empty struct: no assets, no column
        fields.append(
            pa.field(
                "assets", pa.struct([(k, _asset_type(v)) for k, v in sorted(plan.assets.items())])
            )
        )
    fields += [
        pa.field("datetime", ts),
        pa.field("start_datetime", ts),
        pa.field("end_datetime", ts),
    ]
    fields += [pa.field(column, KIND_TYPES[kind]) for _, column, kind in plan.properties]
    fields.append(_embedding_field(plan))
    return pa.schema(fields, metadata=_metadata(plan))


def _extensions(plan: ExportPlan) -> list[str]:
    keys = [p[0] for p in plan.properties] + [f for fields in plan.assets.values() for f in fields]
    prefixes = {k.partition(":")[0] for k in keys if ":" in k}
    return sorted({EXTENSION_SCHEMAS[p] for p in prefixes if p in EXTENSION_SCHEMAS})


def _embeddings_meta(plan: ExportPlan, collection: dict[str, Any]) -> dict[str, Any]:
    """The ``embeddings`` key: what a reader needs to use the vectors without embcat."""
    req, space, quant = plan.request, plan.space, plan.quantization
    links = plan.collection.get("links") or []
    model = next((lk.get("href") for lk in links if lk.get("rel") == "emb:model"), None)
    source = [lk.get("href") for lk in links if lk.get("rel") == "emb:source-data"]
    if quant is None:
        dequantize = None
    elif req.dtype == "int8":
        dequantize = "x = q * scale[d] + offset[d] (per dimension d); error <= scale[d] / 2"
    else:
        dequantize = "bit d of the packed bytes, most significant bit first: 1 -> +1.0, 0 -> -1.0"
    dims, np_dtype = space.dimensions, NUMPY_DTYPES[req.dtype]
    per_row = -(-dims // 8) if req.dtype == "binary" else dims
    if req.dtype == "binary" or req.vector_layout == "bytes":
        layout = {
            "layout": "fixed_size_binary",
            "byte_width": per_row * np.dtype(np_dtype).itemsize,
            "value_dtype": np_dtype,  # numpy type string: little-endian where it matters
            "values_per_row": per_row,
            "decode": f"numpy.frombuffer(b''.join(column), '{np_dtype}').reshape(-1, {per_row})"
            f" (pyarrow: numpy.frombuffer(array.buffers()[1], '{np_dtype}'))",
        }
    else:
        layout = {
            "layout": "fixed_size_list",
            "value_dtype": np_dtype,
            "values_per_row": per_row,
            "decode": f"numpy.asarray(array.flatten()).reshape(-1, {per_row})",
        }
    return {
        "column": "embedding",
        "encoding": layout,
        "model": {
            "name": space.encoder_name,
            "version": space.encoder_version,
            "href": model,
            "mlm:name": (space.mlm or {}).get("mlm:name"),
        },
        "dimensions": space.dimensions,
        "dtype": req.dtype,
        "stored_dtype": "float16" if space.storage == "halfvec" else "float32",
        "metric": space.metric,
        "normalized": space.normalized,
        "quantization": None if quant is None else {**quant.as_stac(), "dequantize": dequantize},
        "source": {"collection": req.collection_id, "emb:source-data": source},
        "order": req.resolved_order(),
        "profile": req.columns,
        "license": collection.get("license"),
    }


def _metadata(plan: ExportPlan) -> dict[bytes, bytes]:
    req, space = plan.request, plan.space
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": [],
                "covering": {
                    "bbox": {
                        "xmin": ["bbox", "xmin"],
                        "ymin": ["bbox", "ymin"],
                        "xmax": ["bbox", "xmax"],
                        "ymax": ["bbox", "ymax"],
                    }
                },
            }
        },
    }
    if req.columns == "minimal":  # no bbox column to point at
        del geo["columns"]["geometry"]["covering"]  # type: ignore[index]
    collection = {k: v for k, v in plan.collection.items() if k != "links"} | {
        "id": req.collection_id
    }
    embcat = {
        "format_version": FORMAT_VERSION,
        "collection": req.collection_id,
        "space": {
            "encoder_name": space.encoder_name,
            "encoder_version": space.encoder_version,
            "dimensions": space.dimensions,
            "storage": space.storage,
            "metric": space.metric,
            "normalized": space.normalized,
        },
        "dtype": req.dtype,
        "vector_layout": req.vector_layout,
        "emb:quantization": plan.quantization.as_stac() if plan.quantization else None,
        "query": req.describe(),
        "as_of": plan.as_of,
        "rows": plan.rows,
        "more": plan.more,
        "properties": [{"name": n, "column": c, "kind": k} for n, c, k in plan.properties],
        "assets": plan.assets,
        "base_url": req.base_url,
    }
    return {
        b"geo": json.dumps(geo).encode(),
        EMBEDDINGS_KEY: json.dumps(_embeddings_meta(plan, collection)).encode(),
        b"stac-geoparquet": json.dumps(
            {"version": "1.0.0", "collections": {req.collection_id: collection}}
        ).encode(),
        META_KEY: json.dumps(embcat, sort_keys=True).encode(),
    }


# --------------------------------------------------------------------------- streaming


def _decode_vectors(raw: list[bytes], space: Space) -> np.ndarray:
    """``(n, D)`` float32 from pgvector binary values, in one vectorised step."""
    width = 2 if space.storage == "halfvec" else 4
    record = np.dtype([("hdr", ">u4"), ("v", f">f{width}", (space.dimensions,))])
    arr = np.frombuffer(b"".join(raw), dtype=record)
    return arr["v"].astype(np.float32)


def _embedding_array(raw: Any, plan: ExportPlan) -> pa.Array:
    """The ``embedding`` column from pgvector binary values. Where the dtype is the stored
    one (float16 of a halfvec space, float32 of a vector space) the values are only
    byte-swapped, not converted; the column then shares the swapped array's memory."""
    space, dtype, layout = plan.space, plan.request.dtype, plan.request.vector_layout
    stored = "float16" if space.storage == "halfvec" else "float32"
    if dtype != stored:
        data = quantize(_decode_vectors(list(raw), space), dtype, plan.quantization)
        return array_of(data, dtype, space.dimensions, layout)
    width = 2 if stored == "float16" else 4
    record = np.dtype([("hdr", ">u4"), ("v", f">f{width}", (space.dimensions,))])
    values = np.frombuffer(b"".join(raw), dtype=record)["v"].astype(f"<f{width}")
    return array_of(values, dtype, space.dimensions, layout)


def _json_text(value: Any) -> Any:
    """Compact JSON text with sorted keys (the ``json`` kind), from a jsonb value's text."""
    if value is None:
        return None
    parsed = orjson.loads(value)
    if parsed is None:
        return None
    return orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS).decode()


def _json_list(value: Any) -> Any:
    return None if value is None else orjson.loads(value)


def _extract(doc: sql.Composable, key: str, kind: str) -> sql.Composable:
    """SQL for one property / asset field of ``doc`` (jsonb), typed for ``kind``.

    PostgreSQL takes the values out of the jsonb documents, so Python never parses the
    properties or assets; JSON ``null`` and a missing key both give SQL NULL.
    """
    k = sql.Literal(key)
    if kind == "string":
        return sql.SQL("{d} ->> {k}").format(d=doc, k=k)
    if kind == "int64":
        return sql.SQL("({d} ->> {k})::numeric::int8").format(d=doc, k=k)
    if kind == "float64":
        return sql.SQL("({d} ->> {k})::float8").format(d=doc, k=k)
    if kind == "bool":
        return sql.SQL("({d} ->> {k})::bool").format(d=doc, k=k)
    # json and list_string: the value's JSON text, parsed in Python (once per distinct value)
    return sql.SQL("({d} -> {k})::text").format(d=doc, k=k)


def _vector_bytes(plan: ExportPlan) -> sql.Composable:
    """The vector in pgvector's binary form, as bytea (so COPY needs no pgvector loader)."""
    return sql.SQL("{}_send(e.{})").format(
        sql.SQL(plan.space.storage), sql.Identifier(plan.space.column)
    )


def _select(plan: ExportPlan) -> tuple[sql.Composable, list[str]]:
    """The SELECT list and the PostgreSQL type of each column (for the binary COPY)."""
    epoch = "(extract(epoch FROM i.{}) * 1000000)::int8"
    if plan.request.columns == "minimal":
        return (
            sql.SQL("SELECT i.id, ST_AsBinary(i.geometry), " + epoch.format("datetime") + ", ")
            + _vector_bytes(plan),
            ["text", "bytea", "int8", "bytea"],
        )
    b = "i.bbox[array_length(i.bbox, 1) / 2 + {}]"
    types = ["text", "bytea", "float8", "float8", "float8", "float8", "int8", "int8", "int8"]
    cols: list[sql.Composable] = [
        sql.SQL(
            "i.id, ST_AsBinary(i.geometry), i.bbox[1], i.bbox[2], "
            + b.format(1)
            + ", "
            + b.format(2)
            + ", "
            + ", ".join(epoch.format(c) for c in DATETIME_COLUMNS)
        ),
        # one JSON object per row for pyarrow's JSON reader (bytes: no str per row)
        sql.SQL("""'{"l":' || i.links::text || '}'"""),
        _vector_bytes(plan),
    ]
    types += ["bytea", "bytea"]
    props = sql.SQL("i.properties")
    for name, _column, kind in plan.properties:
        cols.append(_extract(props, name, kind))
        types.append(KIND_PG_TYPES[kind])
    for akey, fields in sorted(plan.assets.items()):
        asset = sql.SQL("(i.assets -> {})").format(sql.Literal(akey))
        cols.append(sql.SQL("jsonb_typeof({}) = 'object'").format(asset))
        types.append("bool")
        for fkey, kind in sorted(fields.items()):
            cols.append(
                sql.SQL("CASE WHEN jsonb_typeof({a}) = 'object' THEN {v} END").format(
                    a=asset, v=_extract(asset, fkey, kind)
                )
            )
            types.append(KIND_PG_TYPES[kind])
    return sql.SQL("SELECT ") + sql.SQL(", ").join(cols), types


_LINKS_SCHEMA = pa.schema([("l", pa.list_(LINK_TYPE))])
_URI = r"^[A-Za-z][A-Za-z0-9+.-]*:"  # what catalog.stac.source_uri leaves as it is
_DRIVE = r"^[A-Za-z]:[\\/]"


def _served(href: pa.Array) -> pa.Array:
    out = pa.array(np.zeros(len(href), bool))
    for prefix in SERVED_PREFIXES:
        out = pc.or_(out, pc.fill_null(pc.starts_with(href, prefix), False))
    return out


def _abs_array(href: pa.Array, base: str | None) -> pa.Array:
    """Root-relative hrefs of what the API serves made absolute (as catalog.stac does)."""
    if not base:
        return href
    return pc.if_else(_served(href), pc.binary_join_element_wise(base, href, ""), href)


def _links(texts: Any, base: str | None) -> pa.Array:
    """The ``links`` column from ``{"l": [links]}`` JSON lines, parsed by pyarrow's JSON
    reader (C++), generated rels dropped and hrefs made absolute column-wise; only a source
    path stored before migration 0013 (no URI yet) goes through Python."""
    n = len(texts)
    block = max(1 << 20, 2 * max(map(len, texts), default=0) + 2)
    table = pajson.read_json(
        pa.BufferReader(b"\n".join(texts)),
        read_options=pajson.ReadOptions(block_size=block),
        parse_options=pajson.ParseOptions(
            explicit_schema=_LINKS_SCHEMA, unexpected_field_behavior="ignore"
        ),
    )
    lists = table.column("l").combine_chunks()
    flat, parents = lists.flatten(), pc.list_parent_indices(lists)
    keep = pc.invert(
        pc.fill_null(pc.is_in(flat.field("rel"), pa.array(sorted(GENERATED_RELS))), False)
    )
    if not pc.all(keep).as_py():
        flat, parents = flat.filter(keep), parents.filter(keep)
    rel, href, typ, title = flat.flatten()
    served = _served(href)
    source = pc.fill_null(pc.is_in(rel, pa.array(sorted(SOURCE_RELS))), False)
    uri = pc.and_(
        pc.match_substring_regex(href, _URI), pc.invert(pc.match_substring_regex(href, _DRIVE))
    )
    fix = np.flatnonzero(
        pc.and_(pc.and_(source, pc.invert(served)), pc.invert(pc.fill_null(uri, True))).to_numpy(
            zero_copy_only=False
        )
    )
    if len(fix):
        values = href.to_pylist()
        for k in fix:  # a path stored before migration 0013
            values[k] = source_uri(values[k]) or values[k]
        href = pa.array(values, pa.string())
    counts = np.bincount(parents.to_numpy(), minlength=n)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.StructArray.from_arrays(
            [rel, _abs_array(href, base), typ, title], fields=list(LINK_TYPE)
        ),
    )


def _column(values: Any, kind: str, base: str | None = None, href: bool = False) -> pa.Array:
    if kind in ("json", "list_string"):
        # values of one property often repeat (template fields): dictionary-encode the JSON
        # texts in Arrow and parse / re-serialise each distinct one once
        codes = pa.array(values, pa.string()).dictionary_encode()
        convert = _json_text if kind == "json" else _json_list
        uniques = [convert(v) for v in codes.dictionary.to_pylist()]
        return pa.array(uniques, KIND_TYPES[kind]).take(codes.indices)
    arr = pa.array(values, KIND_TYPES[kind])
    return _abs_array(arr, base) if href and kind == "string" else arr


def _batch_table(plan: ExportPlan, rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    req = plan.request
    ts = pa.timestamp("us", tz="UTC")
    cols = list(zip(*rows, strict=True))
    if req.columns == "minimal":
        return pa.RecordBatch.from_arrays(
            [
                pa.array(cols[0], pa.string()),
                pa.array(cols[1], pa.binary()),
                pa.array(cols[2], pa.int64()).cast(ts),
                _embedding_array(cols[3], plan),
            ],
            schema=plan.schema,
        )
    base = req.base_url.rstrip("/") if req.base_url else None
    n = len(rows)
    extensions = _extensions(plan)
    links = _links(cols[9], base)
    arrays: list[pa.Array] = [
        pa.array(["Feature"] * n, pa.string()),
        pa.array([stac_version_for(extensions)] * n, pa.string()),
        pa.array([extensions] * n, pa.list_(pa.string())),
        pa.array(cols[0], pa.string()),
        pa.array(cols[1], pa.binary()),
        pa.StructArray.from_arrays(
            [pa.array(cols[k], pa.float64()) for k in (2, 3, 4, 5)],
            fields=list(BBOX_TYPE),
        ),
        pa.array([req.collection_id] * n, pa.string()),
        links,
    ]
    at = 11
    prop_arrays = []
    for _name, _column_name, kind in plan.properties:
        prop_arrays.append(_column(cols[at], kind))
        at += 1
    if plan.assets:
        structs = []
        for _akey, fields in sorted(plan.assets.items()):
            present = pa.array(cols[at], pa.bool_())
            at += 1
            children = []
            for fkey, kind in sorted(fields.items()):
                children.append(_column(cols[at], kind, base, href=fkey == "href"))
                at += 1
            structs.append(
                pa.StructArray.from_arrays(
                    children,
                    fields=list(_asset_type(fields)),
                    mask=pc.invert(pc.fill_null(present, False)),
                )
            )
        arrays.append(
            pa.StructArray.from_arrays(structs, fields=list(plan.schema.field("assets").type))
        )
    arrays += [
        pa.array(cols[6], pa.int64()).cast(ts),
        pa.array(cols[7], pa.int64()).cast(ts),
        pa.array(cols[8], pa.int64()).cast(ts),
    ]
    arrays += prop_arrays
    arrays.append(_embedding_array(cols[10], plan))
    return pa.RecordBatch.from_arrays(arrays, schema=plan.schema)


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


def read_metadata(source: Any) -> dict[str, Any]:
    """The ``embcat`` metadata of an export file (path, file object or buffer)."""
    meta = pq.read_schema(source).metadata or {}
    if META_KEY not in meta:
        raise InvalidInput("not an embcat export: the parquet file has no 'embcat' metadata")
    return dict(json.loads(meta[META_KEY]))


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
