"""Schema migrations (Alembic, scripts in the repository's ``migrations/`` folder)."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from embcat.catalog.checks import check_server
from embcat.catalog.errors import EmbcatError, translated
from embcat.catalog.settings import DatabaseSettings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: DatabaseSettings | None = None) -> Config:
    settings = settings or DatabaseSettings()
    if not (MIGRATIONS_DIR / "env.py").exists():
        raise EmbcatError(
            f"migration scripts not found at {MIGRATIONS_DIR}; install embcat from a checkout"
            " (pip install -e .) so that migrations/ is available"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' must be doubled for configparser interpolation.
    cfg.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return cfg


def preflight(settings: DatabaseSettings) -> None:
    """Check server versions before migrating (extensions may still be uncreated)."""
    with translated(), psycopg.connect(settings.libpq_url, connect_timeout=5) as conn:
        check_server(conn, require_installed=False)


def upgrade(settings: DatabaseSettings | None = None, revision: str = "head") -> None:
    settings = settings or DatabaseSettings()
    preflight(settings)
    with translated():
        command.upgrade(alembic_config(settings), revision)


def downgrade(settings: DatabaseSettings | None = None, revision: str = "base") -> None:
    settings = settings or DatabaseSettings()
    with translated():
        command.downgrade(alembic_config(settings), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: psycopg.Connection) -> str | None:
    """The revision the database is at (None: not migrated)."""
    row = conn.execute("select to_regclass('alembic_version') is not null").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute("select version_num from alembic_version").fetchone()
    return found[0] if found else None


def current(settings: DatabaseSettings | None = None) -> str | None:
    settings = settings or DatabaseSettings()
    with translated(), psycopg.connect(settings.libpq_url, connect_timeout=5) as conn:
        return current_revision(conn)


__all__ = ["MigrationContext", "current", "downgrade", "head_revision", "upgrade"]
