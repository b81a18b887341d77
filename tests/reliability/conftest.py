"""Fixtures of the reliability suite: a live API over a small loaded collection, API keys,
table snapshots (to prove that hostile or failed requests changed nothing)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from helpers_server import ServerHandle, start_server  # tests/ is on sys.path under pytest
from relhelpers import DIMS, N_ITEMS, api_settings_for, vector_connection
from vectorgen import clustered_vectors, load_collection


@pytest.fixture(scope="session")
def rel_collection(database_url: str) -> Iterator[str]:
    """A committed collection of N_ITEMS point items with DIMS-d vectors (HNSW indexed)."""
    cid = f"rel-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(N_ITEMS, DIMS, clusters=6, seed=11)
    with vector_connection(database_url) as conn:
        load_collection(conn, cid, vectors, encoder_name=f"rel-{cid}")
    try:
        yield cid
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


@pytest.fixture(scope="session")
def other_collection(database_url: str) -> Iterator[str]:
    """A second collection (for keys limited to the first)."""
    cid = f"rel-other-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(10, DIMS, clusters=2, seed=12)
    with vector_connection(database_url) as conn:
        load_collection(conn, cid, vectors, encoder_name=f"rel-{cid}", build_index=False)
    try:
        yield cid
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


@pytest.fixture(scope="session")
def rel_server(database_url: str, rel_collection: str) -> Iterator[str]:
    """Base URL of the real API (uvicorn in a thread) with a 256 KiB body limit."""
    handle: ServerHandle = start_server(api_settings_for(database_url))
    try:
        yield handle.base_url
    finally:
        handle.stop()


@pytest.fixture
def make_key(database_url: str) -> Iterator[Callable[..., str]]:
    """Factory of API keys: ``make_key("write", collection=None) -> secret``; deleted after."""
    from embcat.catalog.keys import create_key

    made: list[str] = []

    def factory(*scopes: str, collection: str | None = None) -> str:
        with psycopg.connect(database_url) as conn:
            key_id, secret = create_key(conn, "reliability-test", list(scopes), collection)
        made.append(key_id)
        return secret

    yield factory
    with psycopg.connect(database_url) as conn:
        conn.execute("delete from api_keys where id = any(%s)", (made,))
