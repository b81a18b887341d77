"""Database connections (psycopg 3, pgvector types registered). Nothing runs at import time.

The API keeps its own bounded pool (api/db.py); jobs and the CLI open one connection here.
Alembic drives SQLAlchemy for migrations only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from pgvector.psycopg import register_vector

from catalog.errors import translated
from catalog.settings import DatabaseSettings


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
