"""Test session fixtures: a real PostgreSQL + PostGIS + pgvector, one throwaway database.

The server is the one `scripts/provision-db.sh` prepared (EMBCAT_DATABASE_URL, or the
default local URL). Each test session clones the template database that holds the
extensions, migrates it, and drops it at the end. No mocks of PostgreSQL anywhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from embcat.catalog import migrate
from embcat.catalog.settings import DatabaseSettings, to_libpq_url

BASE_URL = to_libpq_url(os.environ.get("EMBCAT_DATABASE_URL") or DatabaseSettings().database_url)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _admin() -> psycopg.Connection:
    return psycopg.connect(BASE_URL, autocommit=True, connect_timeout=5)


def create_database(
    prefix: str = "embcat_test", *, migrated: bool = True, bare: bool = False
) -> str:
    """Create a uniquely named database and return its URL.

    It is cloned from ``<db>_template`` (which holds the extensions) when that exists;
    ``bare=True`` clones template0 instead: a database without PostGIS and pgvector.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    base_db = urlsplit(BASE_URL).path.lstrip("/") or "embcat"
    with _admin() as conn:
        has_template = conn.execute(
            "select 1 from pg_database where datname = %s", (f"{base_db}_template",)
        ).fetchone()
        if bare:
            template = " TEMPLATE template0"
        else:
            template = f" TEMPLATE {base_db}_template" if has_template else ""
        conn.execute(f'CREATE DATABASE "{name}"{template}')
    url = _with_database(BASE_URL, name)
    if migrated:
        migrate.upgrade(DatabaseSettings(database_url=url))
    return url


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of this test session's migrated database; exported for subprocesses."""
    url = create_database()
    old = os.environ.get("EMBCAT_DATABASE_URL")
    os.environ["EMBCAT_DATABASE_URL"] = url
    try:
        yield url
    finally:
        if old is None:
            os.environ.pop("EMBCAT_DATABASE_URL", None)
        else:
            os.environ["EMBCAT_DATABASE_URL"] = old
        drop_database(url)


@pytest.fixture(scope="session")
def db_settings(database_url: str) -> DatabaseSettings:
    return DatabaseSettings(database_url=database_url)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection in a transaction that is rolled back after the test."""
    from pgvector.psycopg import register_vector

    with psycopg.connect(database_url) as c:
        register_vector(c)
        yield c
        c.rollback()


@pytest.fixture
def make_database() -> Iterator[Callable[..., str]]:
    """Factory for extra databases, dropped after the test: make_database(migrated, bare)."""
    made: list[str] = []

    def factory(migrated: bool = True, bare: bool = False) -> str:
        url = create_database("embcat_extra", migrated=migrated, bare=bare)
        made.append(url)
        return url

    yield factory
    for url in made:
        drop_database(url)


# ----------------------------------------------------------------- explorer browser tests


@pytest.fixture(scope="module")
def explorer_server(database_url: str) -> Iterator[str]:
    """A live API with the explorer (Leaflet installed) on loopback, per test module."""
    from helpers_server import start_server

    from embcat.api.explorer import leaflet_installed
    from embcat.api.settings import ApiSettings

    if not leaflet_installed():
        pytest.fail(
            "Leaflet is not installed under api/explorer/node_modules: run"
            " scripts/setup-explorer.sh (or make setup)"
        )
    handle = start_server(ApiSettings(database_url=database_url, db_pool_max=4))
    try:
        yield handle.base_url
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through chromedriver (tests/browser/harness.py), per module."""
    from browser.harness import BrowserMissing, start_chromium

    try:
        driver = start_chromium()
    except BrowserMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield driver
    finally:
        driver.quit()
