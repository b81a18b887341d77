"""Database connections (psycopg 3, pgvector types registered). Nothing runs at import time.

The API keeps its own bounded pool (api/db.py); jobs and the CLI open one connection here.
Alembic drives SQLAlchemy for migrations only.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import psycopg
from pgvector.psycopg import register_vector

from embcat.catalog.errors import translated
from embcat.catalog.settings import DatabaseSettings

log = logging.getLogger(__name__)


@contextmanager
def connect(
    settings: DatabaseSettings,
    *,
    options: str = "",
    application_name: str = "embcat",
) -> Iterator[psycopg.Connection]:
    """A plain psycopg 3 connection (for COPY and the CLI), errors translated.

    It carries TCP keepalives, ``tcp_user_timeout`` and the server-side
    ``client_connection_check_interval`` (``settings.libpq_kwargs()``): a job killed with
    SIGKILL leaves no backend running on for minutes. ``options`` adds ``-c name=value``
    session settings. ``settings`` come from the caller (its composition root, or
    ``catalog.settings.defaults(DatabaseSettings)`` for a library caller given none).
    """
    kwargs = settings.libpq_kwargs()
    kwargs["options"] = f"{kwargs['options']} {options}".strip()
    with translated():
        conn = psycopg.connect(
            settings.libpq_url, connect_timeout=5, application_name=application_name, **kwargs
        )
    try:
        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            conn.rollback()
        with translated():
            yield conn
    finally:
        conn.close()


class Deadlines:
    """A client-side deadline for statements: past it, the connection's socket is shut down.

    A silent network partition (packets dropped, sockets open; or a middlebox that keeps
    acknowledging) leaves a statement waiting for an answer that never comes: the server's
    ``statement_timeout`` cannot help, because its answer is lost too. ``arm(conn, s)``
    starts the clock, ``disarm(token)`` stops it; when it runs out the socket is shut down
    (``shutdown(2)`` on a duplicate of libpq's descriptor), so the waiting call fails at
    once with ``OperationalError`` (translated to ``DatabaseUnavailable``) and the pool
    discards the broken connection. One daemon thread serves every armed deadline.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self.fired = 0

    def arm(self, conn: psycopg.Connection, seconds: float) -> int:
        """Shut ``conn``'s socket down in ``seconds`` unless disarmed first."""
        return self.arm_call(seconds, partial(shutdown_socket, conn))

    def arm_call(self, seconds: float, action: Callable[[], None]) -> int:
        """Run ``action`` (quickly: it runs on the deadline thread) in ``seconds``."""
        with self._cond:
            self._next += 1
            token = self._next
            self._armed[token] = action
            heapq.heappush(self._heap, (time.monotonic() + seconds, token))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="embcat-db-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return token

    def armed(self, token: int) -> bool:
        """Whether the deadline is still running (neither disarmed nor fired)."""
        with self._cond:
            return token in self._armed

    def disarm(self, token: int) -> bool:
        """Stop the clock; False if the deadline had already fired."""
        with self._cond:
            return self._armed.pop(token, None) is not None

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cond.wait()
                    continue
                due, token = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                action = self._armed.pop(token, None)
            if action is not None:
                self.fired += 1
                try:
                    action()
                except Exception:  # a deadline must never stop the others
                    log.exception("database deadline action failed")


def shutdown_socket(conn: psycopg.Connection) -> None:
    """Shut the connection's socket down (both directions), from any thread."""
    log.warning("database call past its client-side deadline: connection dropped")
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
