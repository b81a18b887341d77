"""Engines and connections. Nothing here runs at import time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy as sa
from pgvector.psycopg import register_vector
from sqlalchemy import event

from catalog.errors import translated
from catalog.settings import DatabaseSettings


def create_engine(settings: DatabaseSettings | None = None, **kwargs: object) -> sa.Engine:
    """A SQLAlchemy engine on psycopg 3 with pgvector types registered on every connection.

    The pool is bounded (``db_pool_max``) and pre-pings, so that after a database restart
    stale connections are replaced instead of failing a request.
    """
    settings = settings or DatabaseSettings()
    options: dict[str, object] = {
        "pool_size": max(settings.db_pool_min, 1),
        "max_overflow": max(settings.db_pool_max - max(settings.db_pool_min, 1), 0),
        "pool_pre_ping": True,
        "pool_timeout": 10,
        "connect_args": {"connect_timeout": 5, "application_name": "embcat"},
    }
    options.update(kwargs)
    engine = sa.create_engine(settings.sqlalchemy_url, **options)  # type: ignore[arg-type]

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: psycopg.Connection, _record: object) -> None:
        try:
            register_vector(dbapi_conn)
        except psycopg.ProgrammingError:
            # The vector extension is not created yet (a fresh database before migrations).
            pass
        if dbapi_conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            dbapi_conn.rollback()

    return engine


@contextmanager
def connect(settings: DatabaseSettings | None = None) -> Iterator[psycopg.Connection]:
    """A plain psycopg 3 connection (for COPY and the CLI), errors translated."""
    settings = settings or DatabaseSettings()
    with translated():
        conn = psycopg.connect(settings.libpq_url, connect_timeout=5, application_name="embcat")
    try:
        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            conn.rollback()
        with translated():
            yield conn
    finally:
        conn.close()
