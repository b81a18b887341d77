"""The imagery tables (migration 0020): ``item_thumbnails`` (a chip's PNG, merged from
publish's staging table with the publish's mode) and ``collection_quicklooks`` (a source
scene's PNG and WGS84 bounds, by key). catalog.imagery checks the PNGs and builds the
assets; this module reads and writes the rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql


def merge_thumbnails(conn: psycopg.Connection, collection_id: str, mode: str) -> None:
    """Copy the staged chunk's PNGs (``publish_staging.thumbnail``) into ``item_thumbnails``
    (after the items merge).

    insert: every staged thumbnail; ignore: those of items that have the asset and no row
    yet; upsert: replaced where different, and removed for staged items without one."""
    params = {"cid": collection_id}
    insert = sql.SQL(
        "INSERT INTO item_thumbnails (collection_id, item_id, png)"
        " SELECT %(cid)s::text, s.id, s.thumbnail FROM publish_staging s {join}"
        " WHERE s.thumbnail IS NOT NULL {conflict}"
    )
    if mode == "insert":
        conn.execute(insert.format(join=sql.SQL(""), conflict=sql.SQL("")), params)
        return
    join = sql.SQL(
        "JOIN items i ON i.collection_id = %(cid)s AND i.id = s.id AND i.assets ? 'thumbnail'"
    )
    if mode == "ignore":
        conflict = sql.SQL("ON CONFLICT (collection_id, item_id) DO NOTHING")
    else:
        conflict = sql.SQL(
            "ON CONFLICT (collection_id, item_id) DO UPDATE SET png = excluded.png"
            " WHERE item_thumbnails.png IS DISTINCT FROM excluded.png"
        )
        conn.execute(
            "DELETE FROM item_thumbnails t USING publish_staging s"
            " WHERE t.collection_id = %(cid)s AND t.item_id = s.id AND s.thumbnail IS NULL",
            params,
        )
    conn.execute(insert.format(join=join, conflict=conflict), params)


def thumbnail(conn: psycopg.Connection, collection_id: str, item_id: str) -> bytes | None:
    """The item's thumbnail PNG (None: it has none)."""
    row = conn.execute(
        "SELECT png FROM item_thumbnails WHERE collection_id = %s AND item_id = %s",
        (collection_id, item_id),
    ).fetchone()
    return None if row is None else bytes(row[0])


def put_quicklook(
    conn: psycopg.Connection,
    collection_id: str,
    key: str,
    *,
    source_item: str,
    bbox: list[float],
    acquired: datetime | None,
    png: bytes,
    sha256: str,
) -> None:
    """Insert or replace a quicklook of the collection (rewritten only when its bytes or
    its bounds changed)."""
    conn.execute(
        "INSERT INTO collection_quicklooks"
        " (collection_id, key, source_item, bbox, datetime, png, sha256)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (collection_id, key) DO UPDATE SET source_item = excluded.source_item,"
        " bbox = excluded.bbox, datetime = excluded.datetime, png = excluded.png,"
        " sha256 = excluded.sha256, updated_at = now()"
        " WHERE collection_quicklooks.sha256 IS DISTINCT FROM excluded.sha256"
        " OR collection_quicklooks.bbox IS DISTINCT FROM excluded.bbox",
        (collection_id, key, source_item, bbox, acquired, png, sha256),
    )


def quicklook(conn: psycopg.Connection, collection_id: str, key: str) -> tuple[bytes, str] | None:
    """(PNG bytes, sha256) of the collection's quicklook ``key`` (None: no such quicklook)."""
    row: tuple[Any, ...] | None = conn.execute(
        "SELECT png, sha256 FROM collection_quicklooks WHERE collection_id = %s AND key = %s",
        (collection_id, key),
    ).fetchone()
    return None if row is None else (bytes(row[0]), str(row[1]))
