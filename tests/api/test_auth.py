"""Read protection (setting) and errors when the database is unreachable."""

from __future__ import annotations

import httpx
import psycopg
from helpers_server import running_server

from catalog.keys import create_key


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
