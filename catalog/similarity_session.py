"""Transaction-local settings of a similarity query and the pgvector adapters."""

from __future__ import annotations

import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.adapt import PyFormat


def _set_local_query(values: dict[str, str]) -> tuple[sql.Composed, list[str]]:
    """SELECT that sets GUCs transaction-locally and returns their previous values."""
    names = list(values)
    query = sql.SQL("select {}, {}").format(
        sql.SQL(", ").join(sql.SQL("current_setting(%s, true)") for _ in names),
        sql.SQL(", ").join(sql.SQL("set_config(%s, %s, true)") for _ in names),
    )
    return query, [*names, *[v for name in names for v in (name, values[name])]]


def _set_local(conn: psycopg.Connection, values: dict[str, str]) -> dict[str, str | None]:
    """Set GUCs transaction-locally in one round trip; returns the previous values."""
    row = conn.execute(*_set_local_query(values)).fetchone()
    assert row is not None
    return dict(zip(values, row[: len(values)], strict=True))


def _put_back(conn: psycopg.Connection, old: dict[str, str | None]) -> None:
    """Restore GUCs set by ``_set_local`` (inside the caller's still-open transaction)."""
    put_back = {k: v for k, v in old.items() if v is not None}
    if put_back and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
        _set_local(conn, put_back)


def _vector_adapters(conn: psycopg.Connection) -> None:
    """pgvector's types on ``conn`` (registered once if the caller's connection lacks them)."""
    try:
        conn.adapters.get_dumper(HalfVector, PyFormat.BINARY)
    except psycopg.ProgrammingError:
        register_vector(conn)
