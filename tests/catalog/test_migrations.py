from __future__ import annotations

from collections.abc import Callable

import psycopg

from catalog import migrate
from catalog.settings import DatabaseSettings

TABLES = {
    "collections",
    "items",
    "item_tombstones",
    "embedding_spaces",
    "embeddings",
    "api_keys",
    "publishes",
}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as c:
        rows = c.execute("select tablename from pg_tables where schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade_on_empty_database(make_database: Callable[..., str]) -> None:
    url = make_database(migrated=False)
    settings = DatabaseSettings(database_url=url)
    migrate.upgrade(settings)
    assert TABLES <= _tables(url)
    migrate.downgrade(settings, "base")
    assert not (TABLES & _tables(url))
    migrate.upgrade(settings)
    assert TABLES <= _tables(url)
    assert migrate.current(settings) == migrate.head_revision()


def test_upgrade_twice_changes_nothing(db_settings: DatabaseSettings) -> None:
    before = migrate.current(db_settings)
    migrate.upgrade(db_settings)
    assert migrate.current(db_settings) == before == migrate.head_revision()
