"""Bulk merges of a session's staging table into ``items`` and ``embeddings``, and the
ANALYZE after them.

Publish merges each chunk of ``publish_staging`` (catalog.publish_copy: id, wkb, datetime,
properties, assets, links, embedding) with its mode: ``insert`` (plain INSERTs: a new
collection, or ids checked by ``clashes``), ``ignore`` (ON CONFLICT DO NOTHING) or
``upsert`` (rows replaced only where they differ, so an unchanged re-publish writes
nothing). The mirror's items go through ``store.items.write_sql``; its vectors come from
``mirror_stage`` here. A sharded space's rows are written through its foreign partitions
instead (``store.shards.merge_embeddings``).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from embcat.catalog.store.partitions import space_table
from embcat.catalog.store.spaces import Space

# The planner's columns of items: what ANALYZE samples after a merge (the jsonb documents'
# statistics took most of its time and no query plan uses them).
ANALYZE_ITEM_COLUMNS = (
    "collection_id, id, geometry, bbox, datetime, start_datetime, end_datetime, change_seq"
)


def clashes(conn: psycopg.Connection, collection_id: str, limit: int) -> list[str]:
    """Up to ``limit`` staged ids that are items of the collection already, in id order."""
    rows = conn.execute(
        "select s.id from publish_staging s join items i"
        " on i.collection_id = %s and i.id = s.id order by s.id limit %s",
        (collection_id, limit),
    ).fetchall()
    return [r[0] for r in rows]


def merge_items(conn: psycopg.Connection, collection_id: str, mode: str) -> tuple[int, int]:
    """The staged rows into the collection's items; (inserted, updated)."""
    counts = conn.execute(_merge_items_sql(mode), {"cid": collection_id}).fetchone()
    assert counts is not None
    return int(counts[0]), int(counts[1])


def _merge_items_sql(mode: str) -> sql.Composed:
    conflict = {
        "insert": "",
        "ignore": "ON CONFLICT (collection_id, id) DO NOTHING",
        "upsert": """ON CONFLICT (collection_id, id) DO UPDATE SET
            geometry = excluded.geometry, bbox = excluded.bbox, datetime = excluded.datetime,
            start_datetime = NULL, end_datetime = NULL, properties = excluded.properties,
            assets = excluded.assets, links = excluded.links
          WHERE (ST_AsEWKB(items.geometry), items.bbox, items.datetime, items.start_datetime,
                 items.end_datetime, items.properties, items.assets, items.links)
             IS DISTINCT FROM
                (ST_AsEWKB(excluded.geometry), excluded.bbox, excluded.datetime, NULL::timestamptz,
                 NULL::timestamptz, excluded.properties, excluded.assets, excluded.links)""",
    }[mode]
    return sql.SQL(
        """
WITH merged AS (
  INSERT INTO items (collection_id, id, geometry, bbox, datetime, properties, assets, links)
  SELECT %(cid)s::text, s.id, g.geom,
         ARRAY[ST_XMin(g.geom), ST_YMin(g.geom), ST_XMax(g.geom), ST_YMax(g.geom)],
         s.datetime, s.properties, s.assets, s.links
    FROM publish_staging s
    CROSS JOIN LATERAL (SELECT ST_GeomFromWKB(s.wkb, 4326) AS geom) g
  {conflict}
  RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged
"""
    ).format(conflict=sql.SQL(conflict))


def merge_embeddings(
    conn: psycopg.Connection, space: Space, mode: str, collection_id: str, table: str
) -> int:
    """The staged vectors into ``table`` (the space's partition, attached or still
    detached, or the default partition); the rows written."""
    col = sql.Identifier(space.column)
    conflict = {
        "insert": sql.SQL(""),
        "ignore": sql.SQL("ON CONFLICT (collection_id, item_id, space_id) DO NOTHING"),
        "upsert": sql.SQL(
            "ON CONFLICT (collection_id, item_id, space_id) DO UPDATE SET {col} = excluded.{col}"
            " WHERE embeddings.{col} IS DISTINCT FROM excluded.{col}"
        ).format(col=col),
    }[mode]
    query = sql.SQL(
        "INSERT INTO {table} AS embeddings"
        " (collection_id, item_id, space_id, geometry, datetime, {col})"
        " SELECT %(cid)s::text, s.id, %(space)s::int, ST_GeomFromWKB(s.wkb, 4326), s.datetime,"
        " s.embedding FROM publish_staging s {conflict}"
    ).format(col=col, conflict=conflict, table=sql.Identifier("public", table))
    return max(conn.execute(query, {"cid": collection_id, "space": space.id}).rowcount, 0)


def mirror_embeddings(
    conn: psycopg.Connection, space: Space, collection_id: str, *, insert_only: bool
) -> None:
    """The vectors of ``mirror_stage`` (columns id, geom as WKB, vec) into the space's
    table; ``insert_only``: none of the ids is there yet (no ON CONFLICT)."""
    col = space.column
    emb_conflict = (
        ""
        if insert_only
        else f"ON CONFLICT (collection_id, item_id, space_id) DO UPDATE SET {col} = excluded.{col}"
    )
    conn.execute(
        f"""INSERT INTO {space_table(conn, space.id)} AS embeddings
                   (collection_id, item_id, space_id, geometry, {col})
            SELECT %s, id, %s, ST_GeomFromWKB(geom, 4326), vec FROM mirror_stage {emb_conflict}""",
        (collection_id, space.id),
    )


# The embedding rows' columns the planner estimates similarity's filters on (the Filter
# renders bbox, intersects and datetime on the rows themselves, migration 0026). Without
# them a bbox of 10 % of a freshly published 20k-row space was estimated at 2 rows and
# searched exactly; autovacuum does not make up for it, as this ANALYZE resets the count
# of changes it waits for. The vectors stay out (~1.5 kB a value, no plan uses them).
ANALYZE_ROW_COLUMNS = (
    "collection_id, item_id, space_id, geometry, datetime, start_datetime, end_datetime"
)


def analyze(conn: psycopg.Connection, space_id: int, *, partition: bool = True) -> None:
    """ANALYZE the planner's columns of items and (``partition``) the table that holds the
    space's rows (its partition only, migration 0021)."""
    conn.execute(f"analyze items ({ANALYZE_ITEM_COLUMNS})")
    if partition:
        conn.execute(f"analyze {space_table(conn, space_id)} ({ANALYZE_ROW_COLUMNS})")
