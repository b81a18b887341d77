"""The database restarted while the API serves: requests fail fast with a 503 JSON error, and
the server recovers by itself. The restart is simulated by a TCP proxy between the API and
the shared PostgreSQL (tests/tcpproxy.py): ``cut()`` drops every connection and refuses new
ones (a stopped server), ``restore()`` accepts again (the server is back)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from helpers_server import start_server
from relhelpers import api_settings_for
from tcpproxy import TcpProxy

FAIL_FAST_S = 5.0  # a request while the database is down must be answered within this
RECOVER_S = 5.0  # after the database is back, requests must succeed within this


@pytest.fixture
def proxied(database_url: str, rel_collection: str) -> Iterator[tuple[str, TcpProxy, str]]:
    """(base URL of an API that reaches the database through a proxy, the proxy, item URL)."""
    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    handle = start_server(api_settings_for(proxy.url_for(database_url)))
    try:
        item = f"{handle.base_url}/collections/{rel_collection}/items/item-001"
        assert httpx.get(item, timeout=30).status_code == 200  # warm pool
        yield handle.base_url, proxy, item
    finally:
        proxy.restore()
        handle.stop()
        proxy.close()


def _timed_get(url: str) -> tuple[float, httpx.Response | None]:
    t0 = time.perf_counter()
    try:
        r: httpx.Response | None = httpx.get(url, timeout=FAIL_FAST_S + 1)
    except httpx.TimeoutException:
        r = None
    return time.perf_counter() - t0, r


@pytest.mark.parametrize("attempt", ["first", "later"])
def test_requests_fail_fast_with_503_while_the_database_is_down(proxied, attempt: str) -> None:
    """The first request meets a dead pooled connection; a later one finds the pool empty."""
    _, proxy, item = proxied
    proxy.cut()
    if attempt == "later":
        _timed_get(item)
    elapsed, r = _timed_get(item)
    assert r is not None, f"no answer within {FAIL_FAST_S + 1} s"
    assert r.status_code == 503
    assert r.json()["code"] == "DatabaseUnavailable"
    assert elapsed < FAIL_FAST_S, f"503 after {elapsed:.1f} s"


def test_health_is_503_fast_while_the_database_is_down(proxied) -> None:
    base, proxy, _ = proxied
    proxy.cut()
    elapsed, r = _timed_get(base + "/health")
    assert r is not None, f"no answer within {FAIL_FAST_S + 1} s"
    assert r.status_code == 503
    assert r.json()["database"] == "unreachable"
    assert elapsed < FAIL_FAST_S, f"503 after {elapsed:.1f} s"


def test_open_endpoints_answer_while_the_database_is_down(proxied) -> None:
    base, proxy, _ = proxied
    proxy.cut()
    elapsed, r = _timed_get(base + "/api")
    assert r is not None and r.status_code == 200
    assert elapsed < FAIL_FAST_S


def test_quick_restart_does_not_fail_requests(proxied) -> None:
    """The database restarted between two requests: pooled connections are dead, yet
    the next requests succeed (the pool checks connections before handing them out)."""
    _, proxy, item = proxied
    proxy.cut()
    proxy.restore()
    codes = [_timed_get(item)[1] for _ in range(4)]
    assert [r.status_code if r is not None else None for r in codes] == [200] * 4


def test_server_recovers_by_itself_after_an_outage(proxied) -> None:
    _, proxy, item = proxied
    proxy.cut()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # an outage of ~6 s with clients retrying
        _timed_get(item)
    proxy.restore()
    restored = time.monotonic()
    while True:
        _, r = _timed_get(item)
        if r is not None and r.status_code == 200:
            break
        assert time.monotonic() - restored < RECOVER_S, "not recovered in time"
        time.sleep(0.2)
    assert time.monotonic() - restored < RECOVER_S


# A silent partition (issue 15, finding 10): the proxy keeps every socket open and drops
# whatever passes, so no TCP error ever arrives (the worst case: TCP's own timeouts never
# fire); the API's own deadlines must answer. Default settings (statement timeout 30 s).


@pytest.fixture
def partitioned(database_url: str, rel_collection: str) -> Iterator[tuple[TcpProxy, str]]:
    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    settings = api_settings_for(proxy.url_for(database_url))
    handle = start_server(settings)
    try:
        item = f"{handle.base_url}/collections/{rel_collection}/items/item-001"
        assert httpx.get(item, timeout=30).status_code == 200  # warm pool
        yield proxy, item
    finally:
        # Cut, not restore: a connection left in the blackhole would hold the server's
        # shutdown (its pool's close) for its full 5 s timeout.
        proxy.cut()
        handle.stop()
        proxy.close()


def test_silent_partition_on_a_pooled_connection_is_503_fast(partitioned) -> None:
    """The request's statement goes into the void; after PROBE_AFTER_S the pool finds that
    a fresh connection gets no answer either, and drops the request's connection: 503."""
    proxy, item = partitioned
    proxy.blackhole()
    elapsed, r = _timed_get(item)
    assert r is not None, f"no answer within {FAIL_FAST_S + 1} s"
    assert r.status_code == 503
    assert r.json()["code"] == "DatabaseUnavailable"
    assert elapsed < FAIL_FAST_S, f"503 after {elapsed:.1f} s"


def test_silent_partition_met_by_the_pool_check_is_503_fast(partitioned, monkeypatch) -> None:
    """Connections idle long enough to be checked with a round trip (QUIET_S, shortened
    here): the check itself has a deadline, and the request gets its 503 in time."""
    import embcat.api.db  # noqa: F401 - loads api.db
    from embcat import api

    monkeypatch.setattr(api.db, "QUIET_S", 0.0)
    proxy, item = partitioned
    proxy.blackhole()
    elapsed, r = _timed_get(item)
    assert r is not None, f"no answer within {FAIL_FAST_S + 1} s"
    assert r.status_code == 503
    assert elapsed < FAIL_FAST_S, f"503 after {elapsed:.1f} s"


def test_server_recovers_after_a_silent_partition(partitioned) -> None:
    proxy, item = partitioned
    proxy.blackhole()
    _timed_get(item)
    proxy.restore()
    restored = time.monotonic()
    while True:
        _, r = _timed_get(item)
        if r is not None and r.status_code == 200:
            break
        assert time.monotonic() - restored < RECOVER_S + 5, "not recovered in time"
        time.sleep(0.2)


def _pool(url: str):  # type: ignore[no-untyped-def]
    from embcat.api.db import create_pool

    pool = create_pool(api_settings_for(url, db_pool_min=1, db_pool_max=2))
    pool.open(wait=True, timeout=30)
    return pool


def test_slow_statement_on_a_live_server_is_not_dropped(database_url: str) -> None:
    """The probe finds the server answering: a statement running through several probes
    (one every PROBE_AFTER_S while it runs) goes on."""
    import embcat.api.db  # noqa: F401 - loads api.db
    from embcat import api

    pool = _pool(database_url)
    try:
        with pool.connection() as conn:
            token = pool.watch(conn, 30.0)
            try:
                conn.execute("select pg_sleep(%s)", (2 * api.db.PROBE_AFTER_S + 4.0,))
            finally:
                pool.unwatch(token)
    finally:
        pool.close()


def test_statement_deadline_drops_a_connection_that_never_answers(database_url: str) -> None:
    """The deadline alone (no probe result yet): the socket is shut down at the deadline."""
    from embcat.catalog.errors import DatabaseUnavailable, translated

    parts = urlsplit(database_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        pool = _pool(proxy.url_for(database_url))
        try:
            with pool.connection() as conn:
                proxy.blackhole()
                token = pool.deadlines.arm(conn, 1.0)
                t0 = time.perf_counter()
                with pytest.raises(DatabaseUnavailable), translated():
                    conn.execute("select 1")
                assert time.perf_counter() - t0 < 3
                assert not pool.deadlines.disarm(token)  # it fired
        finally:
            proxy.restore()
            pool.close(timeout=5)
