"""API fixtures: a live server on the session database and seeded test collections."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import testdb
from apidata import collection_json, insert_collection, insert_items, make_item
from helpers_server import start_server  # tests/ is on sys.path under pytest


@pytest.fixture(scope="session")
def api_settings(database_url: str) -> Any:
    from embcat.api.settings import ApiSettings

    return ApiSettings(database_url=database_url, db_pool_max=4, max_limit=200)


@pytest.fixture(scope="session")
def live_server(api_settings: Any) -> Iterator[str]:
    """Base URL of the real API (uvicorn in a thread) on the session database."""
    handle = start_server(api_settings)
    try:
        yield handle.base_url
    finally:
        handle.stop()


@contextmanager
def _seeded(database_url: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    cid = f"apitest-{uuid.uuid4().hex[:8]}"
    rng = random.Random(5)
    items = [make_item(cid, n, rng) for n in range(25)]
    with psycopg.connect(database_url) as conn:
        insert_collection(conn, collection_json(cid))
        insert_items(conn, items)
    try:
        yield cid, items
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("DELETE FROM collections WHERE id = %s", (cid,))


@pytest.fixture(scope="module")
def seeded(database_url: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A committed collection with 25 generated items (seeded); dropped afterwards."""
    with _seeded(database_url) as out:
        yield out


# A module whose tests read the whole catalogue (the validator walks every collection, STAC
# Browser's item search lists every item) runs on a database of its own: under xdist, or in
# any order, what other modules left in the session database would reach it.


@pytest.fixture(scope="module")
def own_database() -> Iterator[str]:
    """A migrated database of the module's own (a copy of the migrated template)."""
    with testdb.own_database() as url:
        yield url


@pytest.fixture(scope="module")
def own_server(own_database: str) -> Iterator[str]:
    """Base URL of the real API (the session's settings) on the module's own database."""
    from embcat.api.settings import ApiSettings

    handle = start_server(ApiSettings(database_url=own_database, db_pool_max=4, max_limit=200))
    try:
        yield handle.base_url
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def own_seeded(own_database: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """``seeded`` on the module's own database."""
    with _seeded(own_database) as out:
        yield out


@pytest.fixture
def new_collection_id(database_url: str) -> Iterator[Callable[[], str]]:
    """Factory of fresh collection ids; whatever exists under them is dropped afterwards."""
    made: list[str] = []

    def factory() -> str:
        cid = f"apitx-{uuid.uuid4().hex[:8]}"
        made.append(cid)
        return cid

    yield factory
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM collections WHERE id = ANY(%s)", (made,))
