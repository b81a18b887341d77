"""Export streams cannot exhaust PostgreSQL (issue 15, finding 6).

Each ``GET /collections/{id}/export`` holds a database connection of its own while it
streams. A client that stops reading keeps the stream (and its transaction) open; here such
clients are raw sockets with a tiny receive buffer that read the headers and then nothing.
The bound in these tests is 2 streams per server, so the shared server is never stressed.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from helpers_server import start_server
from relhelpers import api_settings_for, vector_connection
from vectorgen import clustered_vectors, load_collection

ROWS, DIMS = 6000, 256  # an export of ~10 MB: far more than the socket buffers hold
BOUND = 2


@pytest.fixture(scope="module")
def big_collection(database_url: str) -> Iterator[str]:
    cid = f"exp-{uuid.uuid4().hex[:8]}"
    with vector_connection(database_url) as conn:
        load_collection(conn, cid, clustered_vectors(ROWS, DIMS, seed=21),
                        encoder_name=f"exp-{cid}", build_index=False)  # fmt: skip
    try:
        yield cid
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


@pytest.fixture
def server(database_url: str, big_collection: str) -> Iterator[str]:
    handle = start_server(
        api_settings_for(
            database_url, export_max_streams=BOUND, idle_in_transaction_timeout_ms=1500
        )
    )
    try:
        yield handle.base_url
    finally:
        handle.stop()


def _stalled_export(base: str, cid: str) -> socket.socket:
    """An export request whose client reads the status line and headers, then stops."""
    parts = urlsplit(base)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect((parts.hostname, parts.port))
    s.sendall(f"GET /collections/{cid}/export?batch_size=16 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = s.recv(512)
        assert data, "connection closed before the headers"
        head += data
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return s


def _reset(s: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): a client that went away."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _open_transactions(url: str) -> int:
    """Sessions of this database left inside a transaction (other than ours)."""
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and pid <> pg_backend_pid() and state like 'idle in transaction%'"
        ).fetchone()
        return int(row[0]) if row else 0


def _wait_for(predicate, seconds: float) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > seconds:
            return -1.0
        time.sleep(0.1)
    return time.monotonic() - t0


def test_streams_past_the_bound_get_503_with_retry_after(server: str, big_collection: str):
    held = [_stalled_export(server, big_collection) for _ in range(BOUND)]
    try:
        r = httpx.get(f"{server}/collections/{big_collection}/export", timeout=30)
        assert r.status_code == 503, r.status_code
        assert r.json()["code"] == "ExportBusy"
        assert int(r.headers["retry-after"]) >= 1
    finally:
        for s in held:
            _reset(s)

    # the slots come back once those clients are gone
    def free() -> bool:
        with httpx.stream(
            "GET", f"{server}/collections/{big_collection}/export?limit=5", timeout=30
        ) as r:
            r.read()
            return r.status_code == 200

    assert _wait_for(free, 10) >= 0


def test_disconnected_client_leaves_no_transaction_open(
    server: str, big_collection: str, database_url: str
) -> None:
    s = _stalled_export(server, big_collection)
    assert _wait_for(lambda: _open_transactions(database_url) >= 1, 10) >= 0
    _reset(s)
    waited = _wait_for(lambda: _open_transactions(database_url) == 0, 5)
    assert waited >= 0, "the export's transaction stayed open after the client went away"


def test_stalled_client_transaction_is_ended_by_the_server(
    server: str, big_collection: str, database_url: str
) -> None:
    """A client that stays connected but stops reading: the session's
    idle_in_transaction_session_timeout (1.5 s here) ends the transaction."""
    s = _stalled_export(server, big_collection)
    try:
        assert _wait_for(lambda: _open_transactions(database_url) >= 1, 10) >= 0
        waited = _wait_for(lambda: _open_transactions(database_url) == 0, 8)
        assert waited >= 0, "a stalled export kept its transaction open"
    finally:
        _reset(s)


def test_stalled_clients_lose_their_slots(server: str, big_collection: str) -> None:
    """Clients that stay connected and read nothing: past the stall limit (1.5 s here) their
    streams are abandoned, so they cannot hold every slot for ever."""
    held = [_stalled_export(server, big_collection) for _ in range(BOUND)]
    try:
        time.sleep(2.5)

        def free() -> bool:
            with httpx.stream(
                "GET", f"{server}/collections/{big_collection}/export?limit=5", timeout=30
            ) as r:
                r.read()
                return r.status_code == 200

        assert _wait_for(free, 5) >= 0, "stalled clients still hold every export slot"
    finally:
        for s in held:
            _reset(s)
