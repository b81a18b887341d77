"""The API's database pool (created in the app's lifespan) and request helpers.

Every connection is opened with the session settings for short API queries:
``statement_timeout`` from the settings, ``jit = off`` and no parallel workers (start-up
of either costs more than a typical 1-30 ms query). Other routers use
``with api.db.connection(request) as conn:`` (a sync psycopg connection in a transaction,
committed on success) from a thread (``starlette.concurrency.run_in_threadpool``).

Silent partitions (issue 15): connections carry TCP keepalives and ``tcp_user_timeout``
(``DatabaseSettings.libpq_kwargs``); a request's database work has a client-side deadline
(``statement_timeout_ms`` + ``db_deadline_margin_ms``), and past PROBE_AFTER_S the pool
probes the server with a fresh connection and drops the waiting ones if it gets no answer.
"""

from __future__ import annotations

import logging
import select
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import orjson
import psycopg
import psycopg_pool
from fastapi import Request
from pgvector.psycopg import register_vector
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg.types.json import set_json_loads

from embcat.api.settings import ApiSettings
from embcat.catalog.db import Deadlines, shutdown_socket
from embcat.catalog.errors import DatabaseUnavailable, translated

log = logging.getLogger(__name__)


def _configure(conn: psycopg.Connection) -> None:
    set_json_loads(orjson.loads, conn)
    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        pass  # vector extension not created yet (bare database): nothing to register
    conn.rollback()


# A pool that lost its server retries each connection with a doubling delay (1, 2, 4 s...)
# for ``reconnect_timeout`` seconds, then gives up that attempt; the next request starts a
# fresh one at once. A short timeout bounds the delay, so requests succeed again a few
# seconds at most after the database is back.
RECONNECT_TIMEOUT_S = 3.0
# While the database is unreachable (the last connection attempt failed and no connection
# is idle), a request waits at most this long (a fresh attempt) before its 503.
UNREACHABLE_WAIT_S = 1.0
# A connection returned to the pool less than this long ago is handed out again without a
# round trip to the server when its socket has nothing to read (see ApiPool._quiet).
# Longer idle connections get the full check: a firewall may drop them without a word.
QUIET_S = 10.0
# A pooled connection's liveness check (one round trip) that takes longer than this meets a
# black-holed network: the connection is dropped (catalog.db.Deadlines).
CHECK_DEADLINE_S = 1.0
# A request whose database work has run this long makes the pool probe the server: one
# fresh connection (at most one at a time, for every slow request together). No answer
# within PROBE_TIMEOUT_S (libpq's connect_timeout, 2 s at least) means a silent
# partition: the slow requests' sockets are shut down (503) without waiting for the
# statement deadline. A server that answers, even with an error, is alive.
PROBE_AFTER_S = 1.5
PROBE_TIMEOUT_S = 2


class ApiPool(psycopg_pool.ConnectionPool):
    """The API's pool: connections checked before they are handed out (a restarted server
    leaves dead ones behind), and knowledge of whether the server was reachable at the last
    attempt, so that requests fail fast while it is down."""

    def __init__(
        self,
        conninfo: str,
        *args: Any,
        deadlines: Deadlines | None = None,
        **kwargs: Any,
    ) -> None:
        self._probe_conninfo = conninfo
        self._probe_kwargs: dict[str, Any] = dict(kwargs.get("kwargs") or {})
        self._unreachable_since: float | None = None
        self._blackholed_at: float | None = None
        self._slow_lock = threading.Lock()
        self._slow_requests: dict[int, psycopg.Connection] = {}
        self._probe_tokens: dict[int, int] = {}
        self._probing = threading.Lock()
        self.deadlines = deadlines or Deadlines()
        self._returned_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = (
            weakref.WeakKeyDictionary()
        )
        super().__init__(
            conninfo, *args, check=self._check_or_sweep, reset=self._returned, **kwargs
        )

    def _returned(self, conn: psycopg.Connection) -> None:
        self._returned_at[conn] = time.monotonic()

    def _quiet(self, conn: psycopg.Connection) -> bool:
        """Recently returned, idle, and nothing to read on its socket: alive.

        A server that ends a connection (a restart, pg_terminate_backend, a crash of the
        backend) sends a FATAL message and closes the socket, which makes it readable; a
        live idle connection has nothing to say. A local poll, not the round trip of
        ``check_connection`` (0.4 ms, a tenth of a fast query).
        """
        at = self._returned_at.get(conn)
        if at is None or time.monotonic() - at > QUIET_S:
            return False
        if (
            conn.closed
            or conn.pgconn.status != ConnStatus.OK
            or conn.pgconn.transaction_status != TransactionStatus.IDLE
        ):
            return False
        try:
            poller = select.poll()
            poller.register(conn.pgconn.socket, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        except (OSError, ValueError, psycopg.Error):
            return False

    def watch(self, conn: psycopg.Connection, deadline_s: float) -> int:
        """Arm a request's deadline and, every PROBE_AFTER_S while it runs, the probe."""
        token = self.deadlines.arm(conn, deadline_s)
        self._arm_probe(token, conn)
        return token

    def _arm_probe(self, token: int, conn: psycopg.Connection) -> None:
        with self._slow_lock:
            self._probe_tokens[token] = self.deadlines.arm_call(
                PROBE_AFTER_S, partial(self._slow, token, conn)
            )

    def unwatch(self, token: int) -> None:
        with self._slow_lock:
            self._slow_requests.pop(token, None)
            probe = self._probe_tokens.pop(token, None)
        if probe is not None:
            self.deadlines.disarm(probe)
        self.deadlines.disarm(token)

    def _slow(self, token: int, conn: psycopg.Connection) -> None:
        """On the deadline thread: note the slow request, start a probe unless one runs."""
        if not self.deadlines.armed(token):
            return  # the request is over
        with self._slow_lock:
            self._slow_requests[token] = conn
        if self._probing.acquire(blocking=False):
            threading.Thread(target=self._probe, name="embcat-db-probe", daemon=True).start()

    def _probe(self) -> None:
        try:
            with self._slow_lock:
                pending = dict(self._slow_requests)
            if not pending:
                return
            if self._server_answers():
                for token, conn in pending.items():  # probe again if they go on
                    with self._slow_lock:
                        still = self._slow_requests.pop(token, None) is not None
                    if still and self.deadlines.armed(token):
                        self._arm_probe(token, conn)
                return
            log.warning(
                "the database does not answer a fresh connection within %s s: dropping %d"
                " waiting connection(s)",
                PROBE_TIMEOUT_S,
                len(pending),
            )
            for token, conn in pending.items():
                if self.deadlines.disarm(token):  # still waiting
                    shutdown_socket(conn)
        finally:
            self._probing.release()

    def _server_answers(self) -> bool:
        kwargs = dict(self._probe_kwargs)
        kwargs.update(connect_timeout=PROBE_TIMEOUT_S, application_name="embcat-api-probe")
        try:
            with psycopg.connect(self._probe_conninfo, **kwargs) as probe:
                token = self.deadlines.arm(probe, PROBE_TIMEOUT_S)
                try:
                    probe.execute("select 1")
                finally:
                    self.deadlines.disarm(token)
            return True
        except psycopg.Error as exc:
            # "FATAL: sorry, too many clients already" and the like: the server answered.
            return "FATAL" in str(exc) or getattr(exc, "sqlstate", None) is not None

    def check_connection(self, conn: psycopg.Connection) -> None:  # type: ignore[override]
        """psycopg_pool's check, with a client-side deadline: a connection that does not
        answer a round trip within CHECK_DEADLINE_S (a black-holed network) is broken."""
        token = self.deadlines.arm(conn, CHECK_DEADLINE_S)
        try:
            psycopg_pool.ConnectionPool.check_connection(conn)
        finally:
            if not self.deadlines.disarm(token):
                self._blackholed_at = time.monotonic()

    def _check_or_sweep(self, conn: psycopg.Connection) -> None:
        if self._quiet(conn):
            return
        self._blackholed_at = None
        try:
            self.check_connection(conn)
        except Exception:
            if self._blackholed_at is not None:
                raise  # checking the others would wait CHECK_DEADLINE_S each
            # The server restarted or went away: the other idle connections are most
            # likely dead too. Replace them now rather than meeting them one by one (the
            # pool sleeps with backoff after each failed check).
            self.check()
            raise

    def _connect(self, timeout: float | None = None) -> psycopg.Connection:
        try:
            conn = super()._connect(timeout)
        except Exception:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
            raise
        self._unreachable_since = None
        return conn

    @property
    def unreachable(self) -> bool:
        """The last connection attempt failed and no connection is idle."""
        return self._unreachable_since is not None and not self._pool


def api_session_options(settings: ApiSettings) -> str:
    """Session settings of every API connection (pool and export streams)."""
    return (
        f"-c statement_timeout={int(settings.statement_timeout_ms)}"
        " -c jit=off -c max_parallel_workers_per_gather=0"
        f" -c idle_in_transaction_session_timeout={int(settings.idle_in_transaction_timeout_ms)}"
    )


def request_deadline_s(settings: ApiSettings) -> float | None:
    """Client-side deadline of one request's database work (None: no statement timeout)."""
    if settings.statement_timeout_ms <= 0:
        return None
    return (settings.statement_timeout_ms + settings.db_deadline_margin_ms) / 1000


def create_pool(settings: ApiSettings) -> ApiPool:
    """A bounded pool, not yet opened (the lifespan opens and closes it)."""
    kwargs: dict[str, Any] = settings.libpq_kwargs()
    kwargs["options"] += f" {api_session_options(settings)}"
    kwargs.update(application_name="embcat-api", connect_timeout=5)
    return ApiPool(
        settings.libpq_url,
        min_size=settings.db_pool_min,
        max_size=max(settings.db_pool_max, settings.db_pool_min, 1),
        kwargs=kwargs,
        configure=_configure,
        timeout=settings.pool_timeout_s,
        reconnect_timeout=RECONNECT_TIMEOUT_S,
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
    timeout = None  # the pool's own (EMBCAT_POOL_TIMEOUT_S)
    if isinstance(pool, ApiPool) and pool.unreachable:
        timeout = min(UNREACHABLE_WAIT_S, pool.timeout)
    deadline = request_deadline_s(request.app.state.settings)
    try:
        with translated():
            conn = pool.getconn(timeout=timeout)
            # The client-side deadline covers the statements and the commit: past it the
            # socket is shut down and the call fails (DatabaseUnavailable, 503).
            token = None
            if deadline is not None and isinstance(pool, ApiPool):
                token = pool.watch(conn, deadline)
            try:
                with conn:
                    yield conn
            finally:
                if token is not None and isinstance(pool, ApiPool):
                    pool.unwatch(token)
                pool.putconn(conn)
    except psycopg_pool.PoolTimeout:
        if isinstance(pool, ApiPool) and pool.unreachable:
            raise DatabaseUnavailable("the database is unreachable; retry shortly") from None
        raise DatabaseUnavailable("no database connection free in time; retry shortly") from None


def base_url(request: Request) -> str:
    """The public base URL (settings.base_url, else what the request was sent to)."""
    configured = getattr(request.app.state.settings, "base_url", None)
    if configured:
        return str(configured).rstrip("/")
    return str(request.base_url).rstrip("/")
