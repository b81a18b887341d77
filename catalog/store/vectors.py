"""Reads of one item's vector and of a collection's item extent (what the API serves
directly: the vector asset route, the explorer's default preview area), and a sample of a
space's vectors.

Each function takes an open connection and returns plain values; a missing collection or
item is a ``NotFound``, a collection without items to measure an ``InvalidInput``.
"""

from __future__ import annotations

import numpy as np
import psycopg

from embcat.catalog.errors import InvalidInput, NotFound

Bounds = tuple[float, float, float, float]


def item_vector(
    conn: psycopg.Connection, collection_id: str, item_id: str
) -> tuple[np.ndarray, str | None]:
    """The item's vector in its collection's space as float32, and the ``file:checksum``
    its ``embeddings`` asset declares (None when it declares none)."""
    row = conn.execute(
        """SELECT coalesce(e.embedding_f32, e.embedding::vector),
                  i.assets -> 'embeddings' ->> 'file:checksum'
             FROM items i
             JOIN collections c ON c.id = i.collection_id
             JOIN embeddings e ON e.collection_id = i.collection_id AND e.item_id = i.id
                              AND e.space_id = c.space_id
            WHERE i.collection_id = %s AND i.id = %s""",
        (collection_id, item_id),
    ).fetchone()
    if row is None:
        exists = conn.execute(
            "SELECT 1 FROM collections WHERE id = %s", (collection_id,)
        ).fetchone()
        if exists is None:
            raise NotFound(f"collection {collection_id!r} does not exist")
        raise NotFound(
            f"item {item_id!r} of collection {collection_id!r} does not exist or has no vector"
        )
    return np.asarray(row[0].to_numpy(), dtype=np.float32), row[1]


def item_extent(conn: psycopg.Connection, collection_id: str) -> Bounds:
    """(west, south, east, north) of the collection's item geometries."""
    row = conn.execute(
        "select ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)"
        " from (select ST_Extent(geometry) as e from items where collection_id = %s) x",
        (collection_id,),
    ).fetchone()
    if row is None or row[0] is None:
        raise InvalidInput(f"collection {collection_id!r} has no items to render")
    west, south, east, north = (float(v) for v in row)
    return west, south, east, north
