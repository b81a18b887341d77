"""Throwaway databases on the provisioned server (a plain module, not a conftest: test
modules and benchmarks import it by name, which ``from conftest import`` cannot do
reliably once a sub-folder has a conftest of its own).

A migrated database is a copy of a *migrated template*: ``<db>_template`` (the extensions)
cloned once and upgraded to head, named after a digest of the migration scripts (and of
the extensions template it came from), so that a change to any migration builds a new one
and each checkout finds its own. It is built under an advisory lock (two test sessions,
or two xdist workers, build it once between them) and published by a rename, so a copy is
never taken of a half-migrated template. ``migrated=False`` databases take the real
upgrade path (tests/catalog/test_migrations.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from embcat.catalog import migrate
from embcat.catalog.settings import DatabaseSettings, to_libpq_url

BASE_URL = to_libpq_url(os.environ.get("EMBCAT_DATABASE_URL") or DatabaseSettings().database_url)

# The key of the session advisory lock held while a migrated template is built: b"embt".
_TEMPLATE_LOCK = 1701671540


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _admin() -> psycopg.Connection:
    return psycopg.connect(BASE_URL, autocommit=True, connect_timeout=5)


def _base_db() -> str:
    return urlsplit(BASE_URL).path.lstrip("/") or "embcat"


def _exists(conn: psycopg.Connection, name: str) -> bool:
    found = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
    return found is not None


def migrations_digest() -> str:
    """A digest of every migration script (env.py and versions/*.py, names and bytes)."""
    root = migrate.migrations_dir()
    digest = hashlib.sha256()
    for path in sorted([*root.glob("*.py"), *(root / "versions").glob("*.py")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _template_source() -> tuple[str, str]:
    """The database a migrated template is cloned from and its template's name: the digest
    covers the migrations, the source's oid and its extensions, so a re-provisioned or
    extended ``<db>_template`` gets a new migrated template too. Read on every call, not
    once per process: scripts/provision-shards.sh adds postgres_fdw and dblink to
    ``<db>_template`` during a session (tests/catalog/test_shards.py), and a database copied
    from the migrated template of before then lacked them (a fresh machine's CI run)."""
    base = f"{_base_db()}_template"
    with _admin() as conn:
        row = conn.execute("select oid from pg_database where datname = %s", (base,)).fetchone()
    source = base if row else "template1"
    # A short read: a clone of ``source`` by another session waits for it (up to 5 s).
    with psycopg.connect(_with_database(BASE_URL, source), connect_timeout=5) as conn:
        oid = conn.execute("select oid from pg_database where datname = current_database()")
        extensions = conn.execute(
            "select string_agg(extname || ' ' || extversion, ',' order by extname)"
            " from pg_extension"
        )
        state = f"{oid.fetchone()}:{extensions.fetchone()}"
    key = hashlib.sha256(f"{migrations_digest()}:{source}:{state}".encode()).hexdigest()
    head = migrate.head_revision() or "base"
    return source, f"{_base_db()}_migrated_{head}_{key[:12]}"


def migrated_template() -> str:
    """The name of the migrated template of this checkout's migrations; built when missing."""
    source, name = _template_source()
    with _admin() as conn:
        if _exists(conn, name):
            return name
        conn.execute("select pg_advisory_lock(%s)", (_TEMPLATE_LOCK,))
        try:
            if _exists(conn, name):  # another session built it while this one waited
                return name
            building = f"{name}_{uuid.uuid4().hex[:8]}"
            conn.execute(f'CREATE DATABASE "{building}" TEMPLATE "{source}"')
            try:
                migrate.upgrade(DatabaseSettings(database_url=_with_database(BASE_URL, building)))
                conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
            except BaseException:
                conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                raise
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_TEMPLATE_LOCK,))
    return name


def create_database(
    prefix: str = "embcat_test", *, migrated: bool = True, bare: bool = False
) -> str:
    """Create a uniquely named database and return its URL.

    ``migrated=True`` copies the migrated template (see the module docstring). Otherwise
    it is cloned from ``<db>_template`` (which holds the extensions) when that exists;
    ``bare=True`` clones template0 instead: a database without PostGIS and pgvector.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    if migrated and not bare:
        template = f' TEMPLATE "{migrated_template()}"'
    elif bare:
        template = " TEMPLATE template0"
    else:
        base = f"{_base_db()}_template"
        with _admin() as conn:
            template = f' TEMPLATE "{base}"' if _exists(conn, base) else ""
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"{template}')
    url = _with_database(BASE_URL, name)
    if migrated and bare:
        migrate.upgrade(DatabaseSettings(database_url=url))
    return url


def drop_database(url: str, wait_s: float = 10.0) -> None:
    """Drop the database, ending its sessions.

    ``WITH (FORCE)`` refuses when a session it may not end is there (an autovacuum worker,
    or a role a test made): then our own role's sessions are ended and a plain DROP, which
    stops autovacuum and waits for the rest, is tried until ``wait_s`` has passed."""
    name = urlsplit(url).path.lstrip("/")
    with _admin() as conn:
        try:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.errors.InsufficientPrivilege:
            pass
        deadline = time.monotonic() + wait_s
        while True:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where datname = %s and usename = current_user and pid <> pg_backend_pid()",
                (name,),
            )
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@contextmanager
def own_database(prefix: str = "embcat_module") -> Iterator[str]:
    """A migrated database of the caller's own for the ``with`` block, dropped after it:
    what a module-scoped fixture yields for a module that must not share the session
    database (it reads the whole catalogue, loads bulk data, or locks tables)."""
    url = create_database(prefix)
    try:
        yield url
    finally:
        drop_database(url)


@contextmanager
def provisioning_lock() -> Iterator[None]:
    """Hold the machine-wide lock of the provisioning scripts (provision-shards.sh,
    provision-db.sh) while a test runs one: two test processes (xdist workers, or two
    sessions) would otherwise create the same clusters or databases at once."""
    path = Path(tempfile.gettempdir()) / "embcat-test-provisioning.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
