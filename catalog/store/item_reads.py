"""Reads of ``items i`` under a rendered filter: item search's page, counts and estimates,
the queryables' sample, the explorer's footprints and version, and small lookups.

``where`` is always a boolean over ``items i``, as ``catalog.filters.Filter.for_items()``
renders it (search adds its keyset and ``extra_where`` parts to it). Statements run in the
caller's transaction and raise what psycopg raises: callers keep their ``translated()``
blocks and messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from embcat.catalog.store.items import ITEM_COLUMNS

Bounds = tuple[float, float, float, float]


def page(
    conn: psycopg.Connection,
    where: sql.Composable,
    keys: sql.Composable,
    order: sql.Composable,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` rows of :data:`ITEM_COLUMNS` matching ``where`` in ``order``, with
    the sort key columns ``keys`` (``expr AS _k<n>``) the page tokens are made of."""
    query = sql.SQL(
        "SELECT {cols}, {keys} FROM items i WHERE {where} ORDER BY {order} LIMIT {limit}"
    ).format(cols=ITEM_COLUMNS, keys=keys, where=where, order=order, limit=sql.Literal(limit))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query).fetchall()


def estimate(conn: psycopg.Connection, where: sql.Composable) -> int | None:
    """The planner's estimate of the items matching ``where`` (no rows are read)."""
    query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM items i WHERE {}").format(where)
    plan = conn.execute(query).fetchone()
    return int(plan[0][0]["Plan"]["Plan Rows"]) if plan else None


def count_at_most(conn: psycopg.Connection, where: sql.Composable, n: int) -> int:
    """The items matching ``where``, counted up to ``n`` (the count stops there)."""
    counted = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM items i WHERE {} LIMIT {}) m").format(
        where, sql.Literal(n)
    )
    row = conn.execute(counted).fetchone()
    return int(row[0]) if row else 0


def property_types(
    conn: psycopg.Connection, collection_id: str | None, sample: int
) -> list[tuple[str, str, int]]:
    """(key, JSON type, count) of the properties of up to ``sample`` items (of one
    collection, or of all), by key, the most frequent type first."""
    where = (
        sql.SQL("TRUE")
        if collection_id is None
        else sql.SQL("collection_id = {}").format(sql.Literal(collection_id))
    )
    query = sql.SQL(
        "SELECT k.key, jsonb_typeof(k.value) AS t, count(*) FROM"
        " (SELECT properties FROM items WHERE {where} LIMIT {n}) s,"
        " jsonb_each(s.properties) k GROUP BY 1, 2 ORDER BY 1, 3 DESC"
    ).format(where=where, n=sql.Literal(sample))
    return conn.execute(query).fetchall()


def _envelope_clause(bbox: Bounds | None) -> tuple[str, dict[str, Any]]:
    if bbox is None:
        return "", {}
    return (
        " and i.geometry && ST_MakeEnvelope(%(w)s, %(s)s, %(e)s, %(n)s, 4326)",
        dict(zip(("w", "s", "e", "n"), bbox, strict=True)),
    )


def footprints(
    conn: psycopg.Connection, collection_id: str, bbox: Bounds | None, limit: int
) -> list[tuple[str, str, str | None]]:
    """(id, GeoJSON text, datetime as JSON text) of up to ``limit`` items of the collection
    whose geometry's box meets ``bbox``, in id order."""
    where, params = _envelope_clause(bbox)
    return conn.execute(
        "select i.id, ST_AsGeoJSON(i.geometry, 7),"
        " to_json(i.datetime)::text from items i"
        f" where i.collection_id = %(c)s{where} order by i.id limit %(limit)s",
        {"c": collection_id, "limit": limit, **params},
    ).fetchall()


def shapes(
    conn: psycopg.Connection, collection_id: str, bbox: Bounds, limit: int
) -> list[tuple[str, str]]:
    """(id, GeoJSON text) of up to ``limit`` items of the collection in ``bbox`` (no order)."""
    where, params = _envelope_clause(bbox)
    return conn.execute(
        "select i.id, ST_AsGeoJSON(i.geometry, 7) from items i"
        f" where i.collection_id = %(c)s{where} limit %(limit)s",
        {"c": collection_id, "limit": limit, **params},
    ).fetchall()


def version(conn: psycopg.Connection, collection_id: str) -> tuple[int, int]:
    """(largest change sequence of items and tombstones, item count) of a collection."""
    row = conn.execute(
        """select greatest(
               (select max(change_seq) from items where collection_id = %(c)s),
               (select max(change_seq) from item_tombstones where collection_id = %(c)s)),
               (select count(*) from items where collection_id = %(c)s)""",
        {"c": collection_id},
    ).fetchone()
    assert row is not None
    return int(row[0] or 0), int(row[1])


def last_change(conn: psycopg.Connection, collection_id: str) -> int:
    """The largest ``change_seq`` of the collection's items (0 when it has none)."""
    row = conn.execute(
        "SELECT coalesce(max(change_seq), 0) FROM items WHERE collection_id = %s",
        (collection_id,),
    ).fetchone()
    return row[0] if row else 0


def property_of_each(conn: psycopg.Connection, collection_id: str, key: str) -> list[tuple]:
    """(id, the ``key`` property as JSON) of every item of the collection, in id order."""
    query = sql.SQL(
        "select id, properties->{} from items where collection_id = %s order by id"
    ).format(sql.Literal(key))
    return conn.execute(query, (collection_id,)).fetchall()


def existing(conn: psycopg.Connection, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of the (collection id, item id) ``pairs`` are items."""
    found = conn.execute(
        sql.SQL("select collection_id, id from items where (collection_id, id) in ({})").format(
            sql.SQL(", ").join(sql.SQL("(%s, %s)") for _ in pairs)
        ),
        [v for p in pairs for v in p],
    ).fetchall()
    return {(c, i) for c, i in found}
