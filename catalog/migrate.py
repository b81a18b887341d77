"""Schema migrations (Alembic; the scripts are the package ``embcat.migrations``, the
checkout's ``migrations/`` folder, found through importlib.resources, so that a wheel
install migrates as a checkout does)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from embcat.catalog.checks import check_server
from embcat.catalog.errors import EmbcatError, translated
from embcat.catalog.settings import DatabaseSettings, defaults

MIGRATIONS_PACKAGE = "embcat.migrations"


def migrations_dir() -> Path:
    """The folder of the Alembic scripts (``env.py``, ``versions/``) of the installed embcat."""
    try:
        root = files(MIGRATIONS_PACKAGE)
    except ModuleNotFoundError:
        raise EmbcatError(
            f"the migration scripts ({MIGRATIONS_PACKAGE}) are not installed; reinstall embcat"
        ) from None
    # Alembic reads a folder of files: an install inside a zip archive has none.
    if not isinstance(root, Path) or not (root / "env.py").is_file():
        raise EmbcatError(
            f"migration scripts not found at {root}; reinstall embcat (unzipped, e.g. pip"
            " install embcat)"
        )
    return root


def alembic_config(settings: DatabaseSettings | None = None) -> Config:
    """Alembic's configuration for ``settings``' database (none: the code defaults, for
    what reads the scripts only, such as ``head_revision``)."""
    settings = settings or defaults(DatabaseSettings)
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # '%' must be doubled for configparser interpolation.
    cfg.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return cfg


def preflight(settings: DatabaseSettings) -> None:
    """Check server versions before migrating (extensions may still be uncreated)."""
    with translated(), psycopg.connect(settings.libpq_url, connect_timeout=5) as conn:
        check_server(conn, require_installed=False)


def upgrade(settings: DatabaseSettings, revision: str = "head") -> None:
    preflight(settings)
    with translated():
        command.upgrade(alembic_config(settings), revision)


def downgrade(settings: DatabaseSettings, revision: str = "base") -> None:
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


def current(settings: DatabaseSettings) -> str | None:
    with translated(), psycopg.connect(settings.libpq_url, connect_timeout=5) as conn:
        return current_revision(conn)


__all__ = ["MigrationContext", "current", "downgrade", "head_revision", "upgrade"]
