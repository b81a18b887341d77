"""The test databases (tests/testdb.py): a copy of the migrated template is the database the
real upgrade makes, the template's name follows the migration scripts, and two processes
that need a missing template at once build it once."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import testdb

from embcat.catalog import migrate
from embcat.catalog.settings import DatabaseSettings


def _schema(url: str) -> dict[str, Any]:
    """What the migrations make: columns, indexes, functions, triggers, extensions, the
    database's own settings, the revision and the row count of every table."""
    with psycopg.connect(url) as c:
        own = "not in ('pg_catalog', 'information_schema', 'pg_toast')"
        tables = c.execute(
            f"select schemaname, tablename from pg_tables where schemaname {own} order by 1, 2"
        ).fetchall()
        rows = {
            f"{s}.{t}": c.execute(f'select count(*) from "{s}"."{t}"').fetchone() for s, t in tables
        }
        return {
            "rows": rows,
            "columns": c.execute(
                "select table_schema, table_name, column_name, data_type, column_default,"
                f" is_nullable from information_schema.columns where table_schema {own}"
                " order by 1, 2, 3"
            ).fetchall(),
            "indexes": c.execute(
                f"select schemaname, tablename, indexdef from pg_indexes where schemaname {own}"
                " order by 1, 2, 3"
            ).fetchall(),
            "functions": c.execute(
                "select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),"
                " md5(p.prosrc) from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
                f" where n.nspname {own} order by 1, 2, 3, 4"
            ).fetchall(),
            "triggers": c.execute(
                "select tgrelid::regclass::text, tgname from pg_trigger where not tgisinternal"
                " order by 1, 2"
            ).fetchall(),
            "extensions": c.execute(
                "select extname, extversion from pg_extension order by 1"
            ).fetchall(),
            "database settings": c.execute(
                "select setrole, setconfig from pg_db_role_setting where setdatabase ="
                " (select oid from pg_database where datname = current_database()) order by 1"
            ).fetchall(),
            "revision": migrate.current_revision(c),
        }


def test_a_copy_of_the_migrated_template_is_what_the_upgrade_makes(
    make_database: Callable[..., str],
) -> None:
    copied = make_database()
    upgraded = make_database(migrated=False)
    migrate.upgrade(DatabaseSettings(database_url=upgraded))
    schema = _schema(copied)
    assert schema["revision"] == migrate.head_revision()
    assert schema == _schema(upgraded)


def test_the_digest_changes_with_any_byte_of_a_migration_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrate, "migrations_dir", lambda: copy)
    before = testdb.migrations_digest()
    script = sorted((copy / "versions").glob("0*.py"))[0]
    script.write_bytes(script.read_bytes() + b"\n")
    assert testdb.migrations_digest() != before


def test_two_sessions_missing_the_template_build_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, _ = testdb._template_source()
    name = f"embcat_migrated_test_{uuid.uuid4().hex[:10]}"
    monkeypatch.setattr(testdb, "_template_source", lambda: (source, name))
    got: list[str] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            got.append(testdb.migrated_template())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == [] and got == [name, name]
        with testdb._admin() as conn:
            made = conn.execute(
                "select datname from pg_database where datname like %s", (name + "%",)
            ).fetchall()
        assert made == [(name,)]  # one template, no half-built copy left behind
    finally:
        with testdb._admin() as conn:
            for (db,) in conn.execute(
                "select datname from pg_database where datname like %s", (name + "%",)
            ).fetchall():
                conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')


def test_drop_waits_for_a_session_it_may_not_end() -> None:
    """WITH (FORCE) may not end another role's session (nor an autovacuum worker): the drop
    waits for it to close instead of failing the test that made the database."""
    url = testdb.create_database("embcat_droptest")
    name, password = f"embcat_droptest_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with testdb._admin() as conn:
        conn.execute(f"create role {name} login password '{password}'")
    parts = urlsplit(url)
    other = urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port}"))
    try:
        session = psycopg.connect(other)
        closer = threading.Timer(1.0, session.close)
        closer.start()
        testdb.drop_database(url)
        closer.join()
        with testdb._admin() as conn:
            assert not conn.execute(
                "select 1 from pg_database where datname = %s", (parts.path[1:],)
            ).fetchone()
    finally:
        testdb.drop_database(url)
        with testdb._admin() as conn:
            conn.execute(f"drop role {name}")


def test_an_extension_added_to_the_template_mid_session_gets_a_new_migrated_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """scripts/provision-shards.sh adds postgres_fdw to ``<db>_template`` during a session:
    a copy of the migrated template made before then would lack it (a fresh CI machine)."""
    base = f"embcat_tsrc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(testdb.BASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{base}_template" TEMPLATE "{testdb._base_db()}_template"')
    try:
        monkeypatch.setattr(testdb, "_base_db", lambda: base)
        _, before = testdb._template_source()
        with psycopg.connect(testdb._with_database(testdb.BASE_URL, f"{base}_template")) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # a trusted extension
            c.commit()
        _, after = testdb._template_source()
        assert after != before
    finally:
        with psycopg.connect(testdb.BASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{base}_template" WITH (FORCE)')
