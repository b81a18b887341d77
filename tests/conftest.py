"""Test session fixtures: a real PostgreSQL + PostGIS + pgvector, one throwaway database.

The server is the one `scripts/provision-db.sh` prepared (EMBCAT_DATABASE_URL, or the
default local URL). Each test session clones the template database that holds the
extensions, migrates it, and drops it at the end. No mocks of PostgreSQL anywhere.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from testdb import BASE_URL, create_database, drop_database  # noqa: E402,F401

from embcat.catalog.settings import DatabaseSettings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test gets a nodeid of its own, or the run stops (a usage error).

    schemathesis 4 builds its per-operation items with ``originalname`` set, and pytest 9.2
    builds a nodeid from ``originalname`` and a callspec only, so all of an API test's
    operations shared one nodeid: pytest-xdist's file scheduler keys tests by nodeid and
    ran one operation of each. Such an item gets its name's "[operation]" back as the
    nodeid's params."""
    for item in items:
        original = getattr(item, "originalname", None)
        tail = item.nodeid.rsplit("::", 1)[-1]
        if (
            isinstance(original, str)
            and item.name.startswith(original + "[")
            and tail != item.name
            and item.parent is not None
        ):
            item._id = item.parent.id.child(original).with_params(item.name[len(original) + 1 : -1])
    twice = sorted(n for n, k in Counter(item.nodeid for item in items).items() if k > 1)
    if twice:
        raise pytest.UsageError(f"tests sharing a nodeid (xdist would run one): {twice[:5]}")


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
    # No per-client bound: the page's many parallel requests (thumbnails), slowed by a busy
    # machine (two xdist workers), go past the default 8 in flight; the page waits out a
    # 429 (test_explorer_browser's test_the_page_waits_out_a_busy_servers_429s, with a bound
    # of one) but the imagery tests' thumbnails would then arrive late
    # (tests/reliability/test_client_limits.py tests the bound).
    settings = ApiSettings(database_url=database_url, db_pool_max=4, max_requests_per_client=0)
    handle = start_server(settings)
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
