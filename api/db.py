"""The API's database pool (created in the app's lifespan) and request helpers.

Every connection is opened with the session settings for short API queries:
``statement_timeout`` from the settings, ``jit = off`` and no parallel workers (start-up
of either costs more than a typical 1-30 ms query). Other routers use
``with api.db.connection(request) as conn:`` (a sync psycopg connection in a transaction,
committed on success) from a thread (``starlette.concurrency.run_in_threadpool``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import psycopg
import psycopg_pool
from fastapi import Request
from pgvector.psycopg import register_vector
from psycopg.types.json import set_json_loads

from api.settings import ApiSettings
from catalog.errors import DatabaseUnavailable, translated


def _configure(conn: psycopg.Connection) -> None:
    set_json_loads(orjson.loads, conn)
    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        pass  # vector extension not created yet (bare database): nothing to register
    conn.rollback()


def create_pool(settings: ApiSettings) -> psycopg_pool.ConnectionPool:
    """A bounded pool, not yet opened (the lifespan opens and closes it)."""
    options = (
        f"-c statement_timeout={int(settings.statement_timeout_ms)}"
        " -c jit=off -c max_parallel_workers_per_gather=0"
    )
    return psycopg_pool.ConnectionPool(
        settings.libpq_url,
        min_size=settings.db_pool_min,
        max_size=max(settings.db_pool_max, settings.db_pool_min, 1),
        kwargs={"options": options, "application_name": "embcat-api", "connect_timeout": 5},
        configure=_configure,
        timeout=settings.pool_timeout_s,
        open=False,
        name="embcat-api",
    )


def get_pool(request: Request) -> psycopg_pool.ConnectionPool:
    pool: psycopg_pool.ConnectionPool = request.app.state.pool
    return pool


@contextmanager
def connection(request: Request) -> Iterator[psycopg.Connection]:
    """A pooled connection in a transaction (committed on success), errors translated."""
    pool = get_pool(request)
    try:
        with translated(), pool.connection() as conn:
            yield conn
    except psycopg_pool.PoolTimeout:
        raise DatabaseUnavailable("no database connection free in time; retry shortly") from None


def base_url(request: Request) -> str:
    """The public base URL (settings.base_url, else what the request was sent to)."""
    configured = getattr(request.app.state.settings, "base_url", None)
    if configured:
        return str(configured).rstrip("/")
    return str(request.base_url).rstrip("/")
