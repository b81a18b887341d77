"""The ``mirror_state`` table: one row per local mirror of a remote collection (migration
0004), keyed by (remote URL, collection id): its phase (``initial`` while the first full
copy runs, then ``incremental``), the export snapshot and last id of the initial phase,
the change feed cursor, and its running totals. Each update commits with the page it
records (catalog.mirror)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_KEY = " WHERE remote_url = %s AND remote_collection = %s"
STATE_COLUMNS = ("phase", "as_of", "after_id", "cursor", "dtype", "filters", "rows_total")


def get(conn: psycopg.Connection, remote_url: str, collection_id: str) -> dict[str, Any] | None:
    """The mirror's state by :data:`STATE_COLUMNS` (None: no such mirror)."""
    row = conn.execute(
        "SELECT phase, as_of, after_id, cursor, dtype, filters, rows_total FROM mirror_state"
        + _KEY,
        (remote_url, collection_id),
    ).fetchone()
    return None if row is None else dict(zip(STATE_COLUMNS, row, strict=True))


def insert(
    conn: psycopg.Connection,
    remote_url: str,
    collection_id: str,
    dtype: str,
    filters: dict[str, Any],
) -> None:
    """A new mirror, in its initial phase."""
    conn.execute(
        "INSERT INTO mirror_state (remote_url, remote_collection, collection_id, phase,"
        " dtype, filters) VALUES (%s, %s, %s, 'initial', %s, %s)",
        (remote_url, collection_id, collection_id, dtype, Jsonb(filters)),
    )


def record_initial_page(
    conn: psycopg.Connection,
    remote_url: str,
    collection_id: str,
    *,
    done: bool,
    as_of: int,
    last_id: str | None,
    rows: int,
    nbytes: int,
) -> None:
    """An initial-phase page written (its last id, up to snapshot ``as_of``); ``done``: it
    was the last one, the mirror goes on from the change feed at ``as_of``."""
    conn.execute(
        "UPDATE mirror_state SET phase = %s, as_of = %s,"
        " after_id = coalesce(%s, after_id), cursor = %s,"
        " rows_total = rows_total + %s, bytes_total = bytes_total + %s,"
        " updated_at = now()" + _KEY,
        ("incremental" if done else "initial", as_of, last_id, as_of if done else 0, rows,
         nbytes, remote_url, collection_id),
    )  # fmt: skip


def record_changes(
    conn: psycopg.Connection,
    remote_url: str,
    collection_id: str,
    *,
    cursor: int,
    rows: int,
    nbytes: int,
) -> None:
    """A page of the change feed applied: the new cursor and the totals."""
    conn.execute(
        "UPDATE mirror_state SET cursor = %s, rows_total = rows_total + %s,"
        " bytes_total = bytes_total + %s, updated_at = now()" + _KEY,
        (cursor, rows, nbytes, remote_url, collection_id),
    )


def set_incremental(conn: psycopg.Connection, remote_url: str, collection_id: str) -> None:
    """The initial phase is over (a plain STAC API's full pass)."""
    conn.execute(
        "UPDATE mirror_state SET phase = 'incremental', updated_at = now()" + _KEY,
        (remote_url, collection_id),
    )
