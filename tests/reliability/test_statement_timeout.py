"""Statement timeouts hold: a search that runs past ``EMBCAT_STATEMENT_TIMEOUT_MS`` is
cancelled by PostgreSQL and answered with a 504 JSON error (not a hang), the connection
goes back to the pool healthy, and no statement is left running."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from helpers_server import start_server
from relhelpers import api_settings_for
from testdb import own_database

TIMEOUT_MS = 100
ROWS = 25_000


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """This module's own database: its 25,000 items are a bulk insert into an empty catalogue
    and a DROP DATABASE afterwards, not a cascading delete among the session's partitions
    (20 s at the end of a full run)."""
    with own_database() as url:
        yield url


@pytest.fixture(scope="module")
def big_collection(database_url: str) -> str:
    """A collection of ROWS random points over 0..10 degrees (no vectors), made in SQL."""
    cid = f"rel-big-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "insert into collections (id, stac) values (%s, %s::jsonb)",
            (cid, json.dumps({"type": "Collection", "id": cid})),
        )
        conn.execute(
            "insert into items (collection_id, id, geometry, bbox, datetime, properties)"
            " select %s, 'p-' || i, ST_SetSRID(ST_MakePoint(x, y), 4326), array[x, y, x, y],"
            " timestamptz '2024-01-01' + i * interval '1 minute', '{}'::jsonb"
            " from (select i, random() * 10 as x, random() * 10 as y"
            "       from generate_series(1, %s) i) s",
            (cid, ROWS),
        )
        conn.execute("analyze items")
    return cid  # dropped with the module's database


@pytest.fixture(scope="module")
def tight_server(database_url: str, big_collection: str) -> Iterator[str]:
    handle = start_server(api_settings_for(database_url, statement_timeout_ms=TIMEOUT_MS))
    try:
        yield handle.base_url
    finally:
        handle.stop()


def _heavy_filter(vertices: int = 8000) -> dict:
    """s_touches with a many-vertex circle covering most points: ~15 s of PostGIS work (150x
    the timeout). Not s_intersects: PostGIS prepares (indexes) a repeated polygon for that,
    which made the query finish inside 100 ms on an idle machine (200, not 504)."""
    ring = [
        [
            round(5 + 4.9 * math.cos(2 * math.pi * k / vertices), 6),
            round(5 + 4.9 * math.sin(2 * math.pi * k / vertices), 6),
        ]
        for k in range(vertices)
    ]
    ring.append(ring[0])
    polygon = {"type": "Polygon", "coordinates": [ring]}
    return {"op": "s_touches", "args": [{"property": "geometry"}, polygon]}


def _heavy_search(base: str, cid: str) -> tuple[float, httpx.Response]:
    body = {
        "collections": [cid],
        "filter": _heavy_filter(),
        "filter-lang": "cql2-json",
        "sortby": [{"field": "properties.datetime", "direction": "desc"}],
        "limit": 1000,
    }
    t0 = time.perf_counter()
    r = httpx.post(base + "/search", json=body, timeout=60)
    return time.perf_counter() - t0, r


def test_query_past_the_statement_timeout_is_504(tight_server: str, big_collection: str) -> None:
    elapsed, r = _heavy_search(tight_server, big_collection)
    assert r.status_code == 504, (r.status_code, r.text[:200])
    assert r.json()["code"] == "QueryTimeout"


def test_server_answers_after_a_timeout(tight_server: str, big_collection: str) -> None:
    _heavy_search(tight_server, big_collection)
    r = httpx.get(f"{tight_server}/collections/{big_collection}/items/p-1", timeout=30)
    assert r.status_code == 200


def test_no_statement_left_running_after_a_timeout(
    tight_server: str, big_collection: str, database_url: str
) -> None:
    _heavy_search(tight_server, big_collection)
    with psycopg.connect(database_url) as conn:
        running = conn.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and application_name = 'embcat-api' and state = 'active'"
            " and query ilike '%%st_touches%%'"
        ).fetchone()
    assert running is not None and running[0] == 0
