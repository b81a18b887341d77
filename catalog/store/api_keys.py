"""The ``api_keys`` table: one row per API key (its id, name, the sha256 of its secret,
scopes, optional collection, and when it was created, revoked and last used).
catalog.keys makes and checks the secrets; this module reads and writes the rows."""

from __future__ import annotations

from typing import Any

import psycopg


def insert(
    conn: psycopg.Connection,
    key_id: str,
    name: str,
    secret_hash: str,
    scopes: list[str],
    collection_id: str | None,
) -> None:
    """A new key (only the hash of its secret is stored)."""
    conn.execute(
        "insert into api_keys (id, name, secret_hash, scopes, collection_id)"
        " values (%s, %s, %s, %s, %s)",
        (key_id, name, secret_hash, scopes, collection_id),
    )


def rows(conn: psycopg.Connection, *, include_revoked: bool) -> list[tuple[Any, ...]]:
    """(id, name, scopes, collection id, created, revoked, last used) of the keys (the
    revoked ones too, or not), oldest first."""
    return conn.execute(
        "select id, name, scopes, collection_id, created_at, revoked_at, last_used_at"
        " from api_keys where %s or revoked_at is null order by created_at, id",
        (include_revoked,),
    ).fetchall()


def revoke(conn: psycopg.Connection, key_id: str) -> bool:
    """Revoke a key (a revoked one keeps its time); False: no such key."""
    row = conn.execute(
        "update api_keys set revoked_at = coalesce(revoked_at, now()) where id = %s returning id",
        (key_id,),
    ).fetchone()
    return row is not None


def touch(conn: psycopg.Connection, key_id: str) -> None:
    """``last_used_at = now()``."""
    conn.execute("update api_keys set last_used_at = now() where id = %s", (key_id,))


def for_verify(conn: psycopg.Connection, key_id: str, stale_after_s: int) -> tuple[Any, ...] | None:
    """(name, secret hash, scopes, collection id, revoked, whether ``last_used_at`` is
    older than ``stale_after_s`` or unset) of a key (None: no such key)."""
    return conn.execute(
        "select name, secret_hash, scopes, collection_id, revoked_at,"
        " last_used_at is null or last_used_at < now() - make_interval(secs => %s)"
        " from api_keys where id = %s",
        (stale_after_s, key_id),
    ).fetchone()
