"""Read protection (setting) and errors when the database is unreachable."""

from __future__ import annotations

import httpx
import psycopg
from helpers_server import running_server

from embcat.catalog.keys import create_key


def test_protected_reads_need_a_read_key(api_settings, database_url) -> None:
    settings = api_settings.model_copy(update={"require_read_key": True})
    with psycopg.connect(database_url) as conn:
        _, secret = create_key(conn, "reader", ["read"])
    with running_server(settings) as base:
        anonymous = httpx.get(base + "/collections")
        keyed = httpx.get(base + "/collections", headers={"X-API-Key": secret})
        health = httpx.get(base + "/health")
    assert (anonymous.status_code, keyed.status_code, health.status_code) == (401, 200, 200)


def test_unreachable_database_is_503_json(api_settings) -> None:
    settings = api_settings.model_copy(
        update={
            "database_url": "postgresql://embcat:embcat@127.0.0.1:1/none",
            "pool_timeout_s": 1.0,
        }
    )
    with running_server(settings) as base:
        r = httpx.get(base + "/collections", timeout=20)
        health = httpx.get(base + "/health", timeout=20)
    assert r.status_code == 503 and r.json()["code"] == "DatabaseUnavailable"
    assert health.status_code == 503


def _last_used(database_url: str, key_id: str):
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select last_used_at from api_keys where id = %s", (key_id,)).fetchone()
    assert row is not None
    return row[0]


def test_key_use_is_recorded_at_most_once_a_minute(database_url) -> None:
    from embcat.catalog.keys import verify

    with psycopg.connect(database_url) as conn:
        key_id, secret = create_key(conn, "throttle", ["read"])
    try:
        with psycopg.connect(database_url) as conn:
            assert verify(conn, secret).key_id == key_id
        first = _last_used(database_url, key_id)
        assert first is not None
        with psycopg.connect(database_url) as conn:
            verify(conn, secret)
            # no write at all this time: the transaction holds no xid
            assert conn.execute("select pg_current_xact_id_if_assigned()").fetchone() == (None,)
        assert _last_used(database_url, key_id) == first
        with psycopg.connect(database_url) as conn:  # older than a minute: refreshed
            conn.execute(
                "update api_keys set last_used_at = now() - interval '2 minutes' where id = %s",
                (key_id,),
            )
        with psycopg.connect(database_url) as conn:
            verify(conn, secret)
        assert _last_used(database_url, key_id) > first
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from api_keys where id = %s", (key_id,))


def test_keys_work_on_a_read_only_database(database_url) -> None:
    """A replica refuses writes: verifying a key still works there (and the request's
    transaction stays usable), last_used_at is simply not recorded."""
    from embcat.catalog.keys import verify

    with psycopg.connect(database_url) as conn:
        key_id, secret = create_key(conn, "replica", ["read"])
    try:
        with psycopg.connect(database_url, options="-c default_transaction_read_only=on") as conn:
            principal = verify(conn, secret)
            assert principal.key_id == key_id and principal.allows("read")
            assert conn.execute("select 1").fetchone() == (1,)
        assert _last_used(database_url, key_id) is None
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from api_keys where id = %s", (key_id,))
