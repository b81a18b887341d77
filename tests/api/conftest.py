"""API fixtures: a live server on the session database and seeded test collections."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
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


@pytest.fixture(scope="module")
def seeded(database_url: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A committed collection with 25 generated items (seeded); dropped afterwards."""
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
