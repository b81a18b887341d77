"""Throwaway databases on the provisioned server (a plain module, not a conftest: test
modules and benchmarks import it by name, which ``from conftest import`` cannot do
reliably once a sub-folder has a conftest of its own)."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg

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
