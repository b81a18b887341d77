"""The mirror's local writes: a page of items as one binary COPY into a staging table,
then INSERT .. SELECT into items and embeddings (the bulk-load path of publish).

``encode_rows`` builds the page's COPY BINARY bytes column-wise with catalog.pgbinary's
helpers (field headers, the jsonb version byte, the vector tail as one numpy record array:
no Python object per value, no per-row adapter calls); it runs in the mirror's decoder
thread, so the writing thread only sends bytes and merges. ``write_page`` merges them in
the caller's transaction: plain INSERTs during the initial phase (the rows after the
last committed id are not there yet: nothing to clash with, no speculative insertion),
upserts for change-feed pages and the item fallback.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from embcat.catalog.pgbinary import (
    COPY_HEADER,
    COPY_TRAILER,
    field_count,
    field_lengths,
    float8_arrays,
    jsonb_fields,
    rows_buffer,
    timestamp_column,
    vector_column,
)
from embcat.catalog.publish_copy import TOAST_TARGET_MAX
from embcat.catalog.store import items as store_items
from embcat.catalog.store import shards, staged_merge
from embcat.catalog.store.spaces import Space

_FIELDS = 10
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class Row:
    """One item of a mirrored page (STAC storage form, hrefs made local) and its vector."""

    id: str
    geometry: bytes
    bbox: list[float]
    datetime: dt.datetime | None
    start_datetime: dt.datetime | None
    end_datetime: dt.datetime | None
    properties: dict[str, Any]
    assets: dict[str, Any]
    links: list[dict[str, Any]]
    vector: np.ndarray


def _binary(values: list[bytes]) -> pa.Array:
    return pa.array(values, pa.binary())


def _timestamps(values: list[dt.datetime | None]) -> pa.Array:
    """``timestamptz`` fields (COPY header included), NULL where None."""
    n = len(values)
    us = np.zeros(n, np.int64)
    valid = np.ones(n, bool)
    for k, v in enumerate(values):
        if v is None:
            valid[k] = False
        else:
            if v.tzinfo is None:  # a STAC datetime without an offset is UTC
                v = v.replace(tzinfo=dt.UTC)
            us[k] = (v - _EPOCH) // dt.timedelta(microseconds=1)
    return timestamp_column(us, valid)


def _jsonb(docs: list[Any]) -> list[pa.Array]:
    return jsonb_fields(_binary([orjson.dumps(d) for d in docs]))


def encode_rows(rows: list[Row], space: Space) -> memoryview:
    """The rows in COPY BINARY form of the staging table (``stage_sql``), header and
    trailer excluded."""
    vectors = np.stack([r.vector for r in rows]).astype(np.float32)
    ids = _binary([r.id.encode() for r in rows])
    wkbs = _binary([bytes(r.geometry) for r in rows])
    joined = pc.binary_join_element_wise(
        field_count(_FIELDS),
        field_lengths(ids), ids,
        field_lengths(wkbs), wkbs,
        float8_arrays([r.bbox for r in rows]),
        _timestamps([r.datetime for r in rows]),
        _timestamps([r.start_datetime for r in rows]),
        _timestamps([r.end_datetime for r in rows]),
        *_jsonb([r.properties for r in rows]),
        *_jsonb([r.assets for r in rows]),
        *_jsonb([r.links for r in rows]),
        vector_column(vectors, space.storage),
        b"",
    )  # fmt: skip
    return rows_buffer(joined)


def stage_sql(space: Space) -> str:
    """The staging table: the item columns of catalog.store.items' staged rows, then the
    vector (``encode_rows`` and ``mirror_columns.encode_page`` write this layout)."""
    columns = ", ".join(f"{name} {kind}" for name, kind in store_items.STAGE_COLUMNS)
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS mirror_stage ({columns}, vec {space.storage})"
        f" WITH (toast_tuple_target = {TOAST_TARGET_MAX}) ON COMMIT DELETE ROWS"
    )


def write_page(
    conn: psycopg.Connection, cid: str, space: Space, rows: list[Row], *, insert_only: bool = False
) -> None:
    """Write ``rows`` into items and embeddings in the caller's transaction."""
    if rows:
        write_copy(conn, cid, space, encode_rows(rows, space), insert_only=insert_only)


def write_copy(
    conn: psycopg.Connection, cid: str, space: Space, data: memoryview, *,
    insert_only: bool = False,
) -> None:  # fmt: skip
    """Write COPY rows of the staging table (``encode_rows``, or
    ``catalog.mirror_columns.encode_page``) into items and embeddings in the caller's
    transaction. ``insert_only``: none of the ids is there yet (no ON CONFLICT)."""
    conn.execute(stage_sql(space))
    conn.execute("TRUNCATE mirror_stage")
    with conn.cursor().copy("COPY mirror_stage FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(COPY_HEADER)
        copy.write(data)
        copy.write(COPY_TRAILER)
    conn.execute(
        store_items.write_sql(
            store_items.table_source("mirror_stage"), "wkb", upsert=not insert_only
        ),
        (cid,),
    )
    if shards.is_sharded(conn, space.id):  # written through to the shards
        mode = "insert" if insert_only else "upsert"
        shards.merge_embeddings(conn, space, mode, cid, source="mirror_stage", wkb="geom",
                                vector="vec")  # fmt: skip
        return
    staged_merge.mirror_embeddings(conn, space, cid, insert_only=insert_only)
