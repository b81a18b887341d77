"""The ``publishes`` table: one record per publish run (what it read, what it merged, its
timings), written in the publish's transaction, listed by ``embcat publish list``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def insert(
    conn: psycopg.Connection,
    collection_id: str,
    *,
    manifest_sha256: str,
    mode: str,
    origin: str,
    started_at: datetime,
    rows_in: int,
    inserted: int,
    updated: int,
    skipped: int,
    details: dict[str, Any],
) -> int:
    """Record a publish; its id."""
    rec = conn.execute(
        "insert into publishes (collection_id, manifest_sha256, mode, origin, started_at,"
        " rows_in, inserted, updated, skipped, details)"
        " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning id",
        (collection_id, manifest_sha256, mode, origin, started_at, rows_in, inserted, updated,
         skipped, Jsonb(details)),
    ).fetchone()  # fmt: skip
    assert rec is not None
    return int(rec[0])


def records(
    conn: psycopg.Connection, collection_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """Publish records (of one collection, or of all), newest first, at most ``limit``."""
    rows = conn.execute(
        "select id, collection_id, mode, origin, manifest_sha256, started_at, finished_at,"
        " rows_in, inserted, updated, skipped, details from publishes"
        " where %(cid)s::text is null or collection_id = %(cid)s"
        " order by finished_at desc, id desc limit %(limit)s",
        {"cid": collection_id, "limit": limit},
    ).fetchall()
    keys = (
        "id", "collection_id", "mode", "origin", "manifest_sha256", "started_at",
        "finished_at", "rows", "inserted", "updated", "skipped", "details",
    )  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in rows]


def source_bytes(conn: psycopg.Connection, collection_id: str) -> int | None:
    """Source bytes of the collection's chips by its publish records: each publish adds its
    manifest's share for the items it inserted (``source_bytes · inserted / rows``), so
    that a re-publish adds nothing; None without records that say."""
    row = conn.execute(
        """SELECT round(sum((details ->> 'source_bytes')::numeric * inserted
                            / nullif(rows_in, 0)))
             FROM publishes
            WHERE collection_id = %(c)s AND details ? 'source_bytes'""",
        {"c": collection_id},
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None
