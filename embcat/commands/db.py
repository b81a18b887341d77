"""``embcat db``: check the server, migrate, show the revision."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import click

from embcat.commands import cli_settings


@contextmanager
def _revision_errors(revision: str) -> Iterator[None]:
    """Alembic's errors for an unknown or unreachable revision as one InvalidInput."""
    from alembic.util import CommandError

    from embcat.catalog.errors import InvalidInput

    try:
        yield
    except CommandError as exc:
        raise InvalidInput(
            f"cannot migrate to revision {revision!r}: {exc} (see `embcat db check` for the"
            " current and head revisions)"
        ) from exc


@click.group()
def db() -> None:
    """Database: versions check and schema migrations."""


@db.command()
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Migrate the schema up to REVISION (idempotent)."""
    from embcat.catalog import migrate

    settings = cli_settings().database
    before = migrate.current(settings)
    with _revision_errors(revision):
        migrate.upgrade(settings, revision)
    after = migrate.current(settings)
    if before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"database migrated {before or 'empty'} -> {after}")


@db.command()
@click.option("--revision", default="-1", show_default=True, help="Target ('base' drops all).")
@click.confirmation_option(prompt="Downgrade the catalogue schema? Data in dropped tables is lost")
def downgrade(revision: str) -> None:
    """Migrate the schema down to REVISION."""
    from embcat.catalog import migrate

    with _revision_errors(revision):
        migrate.downgrade(cli_settings().database, revision=revision)
    click.echo(f"database at revision {migrate.current(cli_settings().database)}")


@db.command()
def check() -> None:
    """Check PostgreSQL, PostGIS and pgvector versions and the schema revision."""
    from embcat.catalog import migrate
    from embcat.catalog.checks import check_server
    from embcat.catalog.db import connect

    with connect(cli_settings().database) as conn:
        v = check_server(conn, require_installed=False)
        rev = migrate.current_revision(conn)
    head = migrate.head_revision()
    click.echo(
        json.dumps(
            {
                "postgres": v.postgres,
                "postgis": v.postgis or v.postgis_available,
                "pgvector": v.pgvector or v.pgvector_available,
                "revision": rev,
                "head": head,
                "up_to_date": rev == head,
            },
            indent=2,
        )
    )
