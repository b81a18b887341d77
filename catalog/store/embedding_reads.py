"""Reads of embedding rows ``embeddings e``: the filtered rows similarity ranks and scoring
scans, the vectors of given items, samples, counts and extents.

A filter arrives rendered for embedding rows (``catalog.filters.RowFilter``): its
conditions on the rows' own columns, and the remainder over ``items i`` that needs the
join (``rows_source`` adds the join only then). The SELECT lists (distances, scores,
projections) stay with their callers; they name the aliases ``e`` and ``i``, never a table.
Statements run in the caller's transaction and raise what psycopg raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from embcat.catalog.filters import RowFilter
from embcat.catalog.store.spaces import Space

Bounds = tuple[float, float, float, float]

# The tables' sizes and row counts as the planner sees them (similarity reads them in its
# first round trip: the key under which a planner estimate is remembered).
# (``embeddings`` is partitioned by space: its partitions' sizes and estimates, summed)
STATS_SQL = (
    "select (select coalesce(sum(pg_relation_size(h.inhrelid)), 0) from pg_inherits h"
    "  where h.inhparent = 'embeddings'::regclass), pg_relation_size('items'),"
    " (select coalesce(sum(greatest(c.reltuples, 0)), 0) from pg_inherits h"
    "  join pg_class c on c.oid = h.inhrelid where h.inhparent = 'embeddings'::regclass),"
    " (select reltuples from pg_class where oid = 'items'::regclass)"
)

# The stored vector of one item in its collection's space, in both storage columns (one is
# null), by (collection id, item id): sent before the space is known, read in binary.
ITEM_VECTOR_SQL = (
    "select e.embedding, e.embedding_f32 from embeddings e"
    " join collections c on c.id = e.collection_id and c.space_id = e.space_id"
    " where e.collection_id = %s and e.item_id = %s"
)


def rows_source(
    space_id: int,
    rows: RowFilter,
    *,
    collection_id: str | None = None,
    exclude: Sequence[tuple[str, str]] = (),
) -> sql.Composed:
    """``from .. where ..`` of the space's rows that pass ``rows`` (of one collection when
    given, without the (collection id, item id) pairs of ``exclude``), for a SELECT list
    over ``e`` (and ``i`` when the filter needs the items).

    Without a filter on items the join is not needed (every vector has its item): the
    planner then sees one table, and an index scan no longer probes items per row."""
    conditions: list[sql.Composable] = [sql.SQL("e.space_id = {}").format(sql.Literal(space_id))]
    if collection_id is not None:
        conditions.append(sql.SQL("e.collection_id = {}").format(sql.Literal(collection_id)))
    conditions.extend(rows.conditions)
    if rows.rest is not None:
        conditions.append(sql.SQL("({})").format(rows.rest))
    if exclude:
        conditions.append(
            sql.SQL("(e.collection_id, e.item_id) not in ({})").format(
                sql.SQL(", ").join(
                    sql.SQL("({}, {})").format(sql.Literal(c), sql.Literal(i)) for c, i in exclude
                )
            )
        )
    source = (
        "from embeddings e where {}"
        if rows.rest is None
        else "from embeddings e join items i on i.collection_id = e.collection_id"
        " and i.id = e.item_id where {}"
    )
    return sql.SQL(source).format(sql.SQL(" and ").join(conditions))


def with_items(ranked: sql.Composed, item_columns: sql.Composable | None) -> sql.Composed:
    """``ranked`` (collection_id, item_id, d), with the items' columns joined if asked for."""
    if item_columns is None:
        return ranked
    return sql.SQL(
        "select r.collection_id, r.item_id, r.d, {cols} from ({ranked}) r"
        " left join items i on i.collection_id = r.collection_id and i.id = r.item_id"
        " order by r.d, r.collection_id, r.item_id"
    ).format(cols=item_columns, ranked=ranked)


def vectors_of(
    conn: psycopg.Connection, space: Space, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], np.ndarray]:
    """The space's vectors (float64) of the (collection id, item id) ``pairs`` that have one."""
    rows = conn.execute(
        sql.SQL(
            "select e.collection_id, e.item_id, {col}::real[] from embeddings e"
            " where e.space_id = %s and (e.collection_id, e.item_id) in ({pairs})"
        ).format(
            col=sql.SQL(space.vector_sql("e")),
            pairs=sql.SQL(", ").join(sql.SQL("(%s, %s)") for _ in pairs),
        ),
        [space.id, *[v for p in pairs for v in p]],
    ).fetchall()
    return {(c, i): np.asarray(v, dtype=np.float64) for c, i, v in rows}


def stored_vector(
    conn: psycopg.Connection, space: Space, collection_id: str, item_id: str
) -> np.ndarray | None:
    """The item's vector in the space as float32 (None: it has none there)."""
    stored = conn.execute(
        f"SELECT {space.vector_sql('e')}::vector FROM embeddings e"
        " WHERE e.collection_id = %s AND e.item_id = %s AND e.space_id = %s",
        (collection_id, item_id, space.id),
    ).fetchone()
    return np.asarray(stored[0].to_numpy(), np.float32) if stored else None


def count(conn: psycopg.Connection, collection_id: str, space_id: int) -> int:
    """The collection's vectors in the space."""
    row = conn.execute(
        "SELECT count(*) FROM embeddings WHERE collection_id = %s AND space_id = %s",
        (collection_id, space_id),
    ).fetchone()
    return int(row[0]) if row else 0


def extent(conn: psycopg.Connection, collection_id: str, space_id: int) -> Bounds | None:
    """(west, south, east, north) of the geometries of the collection's rows in the space
    (None: it has none)."""
    row = conn.execute(
        "select ST_XMin(x), ST_YMin(x), ST_XMax(x), ST_YMax(x) from"
        " (select ST_Extent(geometry)::geometry x from embeddings"
        "  where collection_id = %s and space_id = %s) s",
        (collection_id, space_id),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return float(row[0]), float(row[1]), float(row[2]), float(row[3])


def per_item(
    conn: psycopg.Connection,
    collection_id: str,
    space_id: int,
    columns: str,
    params: dict[str, Any],
) -> list[tuple[Any, ...]]:
    """``(item id, *columns)`` of each of the collection's rows in the space, in item id
    order; ``columns`` is SQL over ``e`` (each starting with a comma) with named
    ``params`` (``c`` and ``s`` are taken)."""
    return conn.execute(
        f"select e.item_id{columns} from embeddings e"
        " where e.collection_id = %(c)s and e.space_id = %(s)s order by e.item_id",
        {**params, "c": collection_id, "s": space_id},
    ).fetchall()


# -- samples -----------------------------------------------------------------------------


def block_sample(conn: psycopg.Connection, space: Space, percent: float, size: int) -> list:
    """Up to ``size`` vectors (``real[]``) of the space from a block sample of ``percent``
    of the table (repeatable), in a hash order of their ids."""
    query = sql.SQL(
        "select {col}::real[] from embeddings e tablesample system (%s) repeatable (7)"
        " where e.space_id = %s order by md5(e.collection_id || '/' || e.item_id) limit %s"
    ).format(col=sql.SQL(space.vector_sql("e")))
    return conn.execute(query, (percent, space.id, size)).fetchall()


def first_rows_sample(conn: psycopg.Connection, space: Space, scan: int, size: int) -> list:
    """Up to ``size`` vectors of the first ``scan`` rows of the space (through its index,
    so bounded whatever the table's size), in a hash order of their ids."""
    query = sql.SQL(
        "select v from (select {col}::real[] as v, e.collection_id, e.item_id"
        " from embeddings e where e.space_id = %s limit %s) s"
        " order by md5(s.collection_id || '/' || s.item_id) limit %s"
    ).format(col=sql.SQL(space.vector_sql("e")))
    return conn.execute(query, (space.id, scan, size)).fetchall()


def item_ids_sample(
    conn: psycopg.Connection, collection_id: str, space_id: int, want: int, percent: float | None
) -> list[str]:
    """Up to ``want`` item ids of the collection's rows in the space in a hash order of
    their ids: from a block sample of ``percent`` of the table (repeatable), or (None) from
    all of its rows."""
    if percent is not None:
        rows = conn.execute(
            "select item_id from embeddings tablesample system (%s) repeatable (7)"
            " where collection_id = %s and space_id = %s order by md5(item_id) limit %s",
            (percent, collection_id, space_id, want),
        ).fetchall()
    else:
        rows = conn.execute(
            "select item_id from embeddings where collection_id = %s and space_id = %s"
            " order by md5(item_id) limit %s",
            (collection_id, space_id, want),
        ).fetchall()
    return [r[0] for r in rows]


def bernoulli_sample(
    conn: psycopg.Connection,
    collection_id: str,
    space: Space,
    size: int,
    share: tuple[float, int] | None,
) -> list:
    """Up to ``size`` vectors of the collection in item id order, read in binary: of each
    row kept with probability ``share`` = (percent, seed) (repeatable), or of every row."""
    sampling = ""
    params: dict[str, Any] = {"c": collection_id, "s": space.id, "n": size}
    if share is not None:
        sampling = "tablesample bernoulli (%(p)s) repeatable (%(seed)s)"
        params |= {"p": share[0], "seed": share[1]}
    query = (
        f"select {space.vector_sql('e')} from embeddings e {sampling}"
        " where e.collection_id = %(c)s and e.space_id = %(s)s"
        " order by e.item_id limit %(n)s"
    )
    with conn.cursor(binary=True) as cur:
        return cur.execute(query, params).fetchall()


def hashed_sample(
    conn: psycopg.Connection, collection_id: str, space: Space, n: int, seed: int
) -> list:
    """Up to ``n`` vectors (``vector``) of the collection picked by a seeded hash of the id
    (repeatable, no full sort)."""
    return conn.execute(
        f"SELECT {space.vector_sql('e')}::vector FROM embeddings e"
        " WHERE e.collection_id = %s AND e.space_id = %s"
        " ORDER BY md5(e.item_id || %s) LIMIT %s",
        (collection_id, space.id, str(seed), n),
    ).fetchall()
