"""The export's reads: its rows (``items i`` joined with their ``embeddings e`` of one
space), their counts, the binary COPY statements, the item shape's discovery over the
jsonb documents, and the shapes kept in ``export_shapes``.

``where`` is a boolean over ``items i`` (``catalog.export_plan`` composes it from the
request's ``catalog.filters.Filter``, the snapshot and the resume point). Statements run
in the caller's transaction and raise what psycopg raises.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from embcat.catalog.store.spaces import Space


def source(space_id: int) -> sql.Composed:
    """The rows an export reads: each item with its vector in the space."""
    return sql.SQL(
        "items i JOIN embeddings e ON e.collection_id = i.collection_id AND e.item_id = i.id"
        " AND e.space_id = {}"
    ).format(sql.Literal(space_id))


def count(
    conn: psycopg.Connection, space_id: int, where: sql.Composable, at_most: int | None = None
) -> int:
    """The rows matching ``where`` (counted up to ``at_most`` when given)."""
    if at_most is None:
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(source(space_id), where)
    else:
        query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT {}) x").format(
            source(space_id), where, sql.Literal(at_most)
        )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def first_rows(space_id: int, where: sql.Composable, limit: int) -> sql.Composed:
    """``where`` narrowed to its first ``limit`` rows in id order (one part of a paged
    export)."""
    return sql.SQL(
        "{w} AND i.id IN (SELECT i.id FROM {src} WHERE {w} ORDER BY i.id LIMIT {n})"
    ).format(w=where, src=source(space_id), n=sql.Literal(limit))


def rows_copy(
    select: sql.Composable,
    space_id: int,
    where: sql.Composable,
    order: sql.Composable,
    limit: int | None,
) -> sql.Composed:
    """The binary COPY of the export's rows: ``select`` (a SELECT list over ``i`` and ``e``)
    of the rows matching ``where``, in ``order`` (an ORDER BY clause), ``limit`` at most."""
    query = sql.SQL("COPY ({sel} FROM {src} WHERE {w}{order}{lim}) TO STDOUT (FORMAT BINARY)")
    return query.format(
        sel=select,
        src=source(space_id),
        w=where,
        order=order,
        lim=sql.SQL(" LIMIT {}").format(sql.Literal(limit)) if limit else sql.SQL(""),
    )


def vectors_copy(space: Space, where: sql.Composable) -> sql.Composed:
    """The binary COPY of only the vectors (pgvector's binary form) of the rows matching
    ``where``: one field a row."""
    template = sql.SQL(
        "COPY (SELECT {send}(e.{col}) FROM {src} WHERE {w}) TO STDOUT (FORMAT BINARY)"
    )
    return template.format(
        send=sql.SQL(f"{space.storage}_send"),
        col=sql.Identifier(space.column),
        src=source(space.id),
        w=where,
    )


# -- the item shape's discovery ----------------------------------------------------------

# Per group of (key, JSON type) of values ``{v}``: the type, whether every number is
# integral, whether every array holds strings only, the count, and min / max of the
# canonical jsonb text (one value when they are equal).
_KIND_AGG = sql.SQL(
    "jsonb_typeof({v}),"
    " bool_and(jsonb_typeof({v}) <> 'number' OR {v}::text ~ '^-?[0-9]{{1,15}}$'),"
    " bool_and(jsonb_typeof({v}) <> 'array'"
    " OR NOT jsonb_path_exists({v}, '$[*] ? (@.type() != \"string\")')),"
    ' count(*), min({v}::text COLLATE "C"), max({v}::text COLLATE "C")'
)


def property_kinds(conn: psycopg.Connection, where: sql.Composable) -> list[tuple[Any, ...]]:
    """``(key, *kind aggregates)`` of the properties of the items matching ``where``, one
    row per key and JSON type, by key and type (one hash aggregate: no DISTINCT sort of
    every value)."""
    query = sql.SQL(
        "SELECT p.key, {agg} FROM {src}, jsonb_each(i.properties) p WHERE {w}"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(agg=_KIND_AGG.format(v=sql.SQL("p.value")), src=sql.SQL("items i"), w=where)
    return conn.execute(query).fetchall()


def asset_field_kinds(conn: psycopg.Connection, where: sql.Composable) -> list[tuple[Any, ...]]:
    """``(asset key, field key, *kind aggregates)`` of the fields of the object assets of
    the items matching ``where``."""
    query = sql.SQL(
        "SELECT a.key, f.key, {agg} FROM {src}, jsonb_each(i.assets) a,"
        " jsonb_each(CASE WHEN jsonb_typeof(a.value) = 'object' THEN a.value ELSE '{{}}' END) f"
        " WHERE {w} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).format(agg=_KIND_AGG.format(v=sql.SQL("f.value")), src=sql.SQL("items i"), w=where)
    return conn.execute(query).fetchall()


def count_items(conn: psycopg.Connection, where: sql.Composable) -> int:
    """The items matching ``where`` (no join to their vectors)."""
    row = conn.execute(sql.SQL("SELECT count(*) FROM items i WHERE {w}").format(w=where)).fetchone()
    return int(row[0]) if row else 0


def assets_present(conn: psycopg.Connection, where: sql.Composable) -> dict[str, int]:
    """Asset key -> how many of the items matching ``where`` have it as an object."""
    query = sql.SQL(
        "SELECT a.key, count(*) FROM items i, jsonb_each(i.assets) a"
        " WHERE {w} AND jsonb_typeof(a.value) = 'object' GROUP BY 1"
    ).format(w=where)
    return {k: int(n) for k, n in conn.execute(query).fetchall()}


def distinct_values(where: sql.Composable, key: str) -> sql.Composed:
    """The distinct non-null values (JSON text) of property ``key`` of the items matching
    ``where`` (the caller reads it from a named cursor, a chunk at a time)."""
    return sql.SQL(
        "SELECT DISTINCT p.value::text FROM items i, jsonb_each(i.properties) p"
        " WHERE {w} AND p.key = {k} AND jsonb_typeof(p.value) <> 'null'"
    ).format(w=where, k=sql.Literal(key))


# -- export_shapes -----------------------------------------------------------------------


def known_shape(conn: psycopg.Connection, collection_id: str) -> tuple[Any, Any, Any] | None:
    """(properties, assets, details) of the shape kept for the collection, while no item was
    written since it was kept (else None)."""
    row = conn.execute(
        "SELECT s.properties, s.assets, s.details FROM export_shapes s"
        " WHERE s.collection_id = %s"
        " AND s.seq >= coalesce((SELECT max(change_seq) FROM items"
        " WHERE collection_id = %s), 0)",
        (collection_id, collection_id),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def keep_shape(
    conn: psycopg.Connection,
    collection_id: str,
    seq: int,
    properties: list[dict[str, str]],
    assets: dict[str, Any],
    details: dict[str, Any],
) -> None:
    """Insert or replace the collection's kept shape, valid up to change ``seq``."""
    conn.execute(
        "INSERT INTO export_shapes (collection_id, seq, properties, assets, details)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (collection_id) DO UPDATE SET"
        " seq = excluded.seq, properties = excluded.properties,"
        " assets = excluded.assets, details = excluded.details, updated_at = now()",
        (collection_id, seq, Jsonb(properties), Jsonb(assets), Jsonb(details)),
    )
