"""The ``items`` table: the one item write, the reads by id, the change feed's reads (its
query and the probe for open writers) and the deletes.

Every writer of item documents but publish (which merges its own staging table in bulk,
``catalog.publish_merge``) goes through :func:`write_sql`: staged rows ``s`` with the
columns of :data:`STAGE_COLUMNS` become items rows by one ``INSERT .. SELECT`` built
here, with ``ON CONFLICT .. DO UPDATE`` for an upsert (and :func:`update_sql`, the same
column mapping as an ``UPDATE``, for a replace that must find the item). The mirror's
source is its binary COPY stage (geometry as WKB), the transaction endpoints' a
``VALUES`` row of parameters (geometry as GeoJSON text, :func:`values_source`); either
way the same columns are written from the same staged values (SRID 4326, the bbox, the
three times, properties, assets, links), and the items triggers (change sequence,
``updated_at``, tombstones, migration 0026's datetime copy onto embedding rows) fire
alike.

Statements run in the caller's transaction and raise what psycopg raises: callers keep
their own ``translated()`` blocks and messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

# The staged row: names and types, in order (the mirror's COPY stage has these columns,
# plus its vector).
STAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "text"),
    ("geom", "bytea"),  # WKB; GeoJSON text in a ``values_source``
    ("bbox", "float8[]"),
    ("dt", "timestamptz"),
    ("sdt", "timestamptz"),
    ("edt", "timestamptz"),
    ("properties", "jsonb"),
    ("assets", "jsonb"),
    ("links", "jsonb"),
)

Geometry = Literal["wkb", "geojson"]
_GEOMETRY: dict[Geometry, str] = {
    "wkb": "ST_GeomFromWKB(s.geom, 4326)",
    "geojson": "ST_SetSRID(ST_GeomFromGeoJSON(s.geom), 4326)",
}

# What an item write sets besides the key, each column from its staged value.
_SET = (
    ("bbox", "s.bbox"),
    ("datetime", "s.dt"),
    ("start_datetime", "s.sdt"),
    ("end_datetime", "s.edt"),
    ("properties", "s.properties"),
    ("assets", "s.assets"),
    ("links", "s.links"),
)
_WRITTEN = ("geometry", *(c for c, _ in _SET))

# Items: the SELECT list every reader uses (the row mapping catalog.stac.item_to_stac
# expects).
ITEM_COLUMNS = sql.SQL(
    "i.collection_id, i.id, ST_AsGeoJSON(i.geometry, 15)::text AS geometry, i.bbox,"
    " i.properties, i.assets, i.links"
)


def values_source(geometry: Geometry = "geojson") -> str:
    """A one-row source ``s`` of parameters, in :data:`STAGE_COLUMNS` order (the geometry
    as GeoJSON text by default)."""
    types = [
        ("text" if name == "geom" and geometry == "geojson" else t) for name, t in STAGE_COLUMNS
    ]
    row = ", ".join(f"%s::{t}" for t in types)
    names = ", ".join(name for name, _ in STAGE_COLUMNS)
    return f"(VALUES ({row})) AS s ({names})"


def table_source(table: str) -> str:
    """A staging table (with the columns of :data:`STAGE_COLUMNS`) as the source ``s``."""
    return f"{table} AS s"


def write_sql(source: str, geometry: Geometry, *, upsert: bool) -> str:
    """``INSERT INTO items .. SELECT`` of every row of ``source`` (``table_source`` or
    ``values_source``), the collection id its first parameter. Without ``upsert`` an id
    that exists raises UniqueViolation (the plain insert of a new collection's rows, or a
    transaction's Conflict); with it, the row is replaced."""
    conflict = ""
    if upsert:
        sets = ", ".join(f"{c} = excluded.{c}" for c in _WRITTEN)
        conflict = f" ON CONFLICT (collection_id, id) DO UPDATE SET {sets}"
    return (
        f"INSERT INTO items (collection_id, id, {', '.join(_WRITTEN)})"
        f" SELECT %s, s.id, {_GEOMETRY[geometry]}, {', '.join(v for _, v in _SET)}"
        f" FROM {source}{conflict}"
    )


def update_sql(source: str, geometry: Geometry) -> str:
    """``UPDATE items`` from the rows of ``source`` (the same mapping as
    :func:`write_sql`), the collection id the parameter after the source's; returns the
    ids it found."""
    sets = ", ".join([f"geometry = {_GEOMETRY[geometry]}", *(f"{c} = {v}" for c, v in _SET)])
    return (
        f"UPDATE items i SET {sets} FROM {source}"
        " WHERE i.collection_id = %s AND i.id = s.id RETURNING i.id"
    )


def insert_rows(
    conn: psycopg.Connection,
    collection_id: str,
    rows: Sequence[Sequence[Any]],
    *,
    upsert: bool = False,
    geometry: Geometry = "geojson",
) -> None:
    """Write staged rows given as parameters (:data:`STAGE_COLUMNS` order), one statement
    each in a pipeline."""
    query = write_sql(values_source(geometry), geometry, upsert=upsert)
    with conn.cursor() as cur:
        cur.executemany(query, [(collection_id, *row) for row in rows])


def update_row(
    conn: psycopg.Connection,
    collection_id: str,
    row: Sequence[Any],
    *,
    geometry: Geometry = "geojson",
) -> bool:
    """Replace an item from a staged row (its id the row's first value); False: no such
    item in the collection."""
    query = update_sql(values_source(geometry), geometry)
    return conn.execute(query, (*row, collection_id)).fetchone() is not None


def exists(conn: psycopg.Connection, collection_id: str, item_id: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM items WHERE collection_id = %s AND id = %s", (collection_id, item_id)
    )
    return found.fetchone() is not None


def get_row(conn: psycopg.Connection, collection_id: str, item_id: str) -> dict[str, Any] | None:
    """The row of one item by :data:`ITEM_COLUMNS` (None: no such item)."""
    query = sql.SQL("SELECT {} FROM items i WHERE i.collection_id = %s AND i.id = %s").format(
        ITEM_COLUMNS
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, (collection_id, item_id)).fetchone()


def asset_checksums(
    conn: psycopg.Connection, collection_id: str, ids: Sequence[str], asset: str
) -> dict[str, str | None]:
    """``file:checksum`` of the ``asset`` of each of ``ids`` stored (absent ids left out)."""
    rows = conn.execute(
        "SELECT i.id, i.assets -> %s::text ->> 'file:checksum' FROM items i"
        " WHERE i.collection_id = %s AND i.id = ANY(%s)",
        (asset, collection_id, list(ids)),
    ).fetchall()
    return dict(rows)


def changes(
    conn: psycopg.Connection, collection_id: str, since: int, high: int, limit: int
) -> list[tuple[Literal["upsert", "delete"], str, int]]:
    """(op, item id, change_seq) of the collection's changes in ``(since, high]``, oldest
    first, at most ``limit``: ``upsert`` for a live item (its latest change), ``delete``
    for a tombstone."""
    rows = conn.execute(
        """select op, id, change_seq from (
             select 'upsert' as op, id, change_seq from items
              where collection_id = %(c)s and change_seq > %(s)s and change_seq <= %(h)s
             union all
             select 'delete', item_id, change_seq from item_tombstones
              where collection_id = %(c)s and change_seq > %(s)s and change_seq <= %(h)s
           ) x order by change_seq limit %(n)s""",
        {"c": collection_id, "s": since, "h": high, "n": limit},
    ).fetchall()
    return [(op, iid, int(seq)) for op, iid, seq in rows]


# The first key of the writers' advisory locks (migrations/versions/0017): b"embc".
WRITER_LOCK_CLASS = 1701667427

# One read of pg_locks: the other transactions holding a write lock on the items tables
# (``w``) and the collections they declared (``d``, the second key as pg_locks shows it: an
# oid, so hashtext's int4 is compared modulo 2^32). ``%(c)s`` null: writers of any collection.
_OPEN_WRITERS_SQL = f"""
with l as materialized (
  select pid, locktype, relation, mode, classid, objid, objsubid from pg_locks
   where database = (select oid from pg_database where datname = current_database())
     and pid <> pg_backend_pid()
), w as (
  select distinct pid from l
   where locktype = 'relation'
     and relation in ('items'::regclass, 'item_tombstones'::regclass)
     and mode in ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                  'AccessExclusiveLock')
), d as (
  select pid, objid::bigint as h from l
   where locktype = 'advisory' and classid = {WRITER_LOCK_CLASS}::oid and objsubid = 2
)
select count(*) from w
 where %(c)s::text is null
    or not exists (select 1 from d where d.pid = w.pid)
    or exists (select 1 from d where d.pid = w.pid
                and d.h = (hashtext(%(c)s::text)::bigint & 4294967295))
"""


def open_writers(conn: psycopg.Connection, collection_id: str | None) -> int:
    """How many other open transactions hold a write lock on the items tables and may
    write the collection (declared it, or declared none; None: any collection)."""
    row = conn.execute(_OPEN_WRITERS_SQL, {"c": collection_id}).fetchone()
    return int(row[0]) if row else 0


def delete(conn: psycopg.Connection, collection_id: str, item_id: str) -> bool:
    """Delete one item (its vectors go with it); False: no such item."""
    row = conn.execute(
        "DELETE FROM items WHERE collection_id = %s AND id = %s RETURNING id",
        (collection_id, item_id),
    ).fetchone()
    return row is not None


def delete_ids(conn: psycopg.Connection, collection_id: str, ids: Sequence[str]) -> int:
    """Delete the collection's items of ``ids``; how many there were."""
    if not ids:
        return 0
    cur = conn.execute(
        "DELETE FROM items WHERE collection_id = %s AND id = ANY(%s)", (collection_id, list(ids))
    )
    return cur.rowcount


def delete_unlisted(conn: psycopg.Connection, collection_id: str, listed: str) -> int:
    """Delete the collection's items whose id is not in the table ``listed`` (column
    ``id``); how many."""
    cur = conn.execute(
        f"DELETE FROM items i WHERE i.collection_id = %s"
        f" AND NOT EXISTS (SELECT 1 FROM {listed} s WHERE s.id = i.id)",
        (collection_id,),
    )
    return cur.rowcount
