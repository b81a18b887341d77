"""The start-up check names what is missing or too old."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from click.testing import CliRunner

from embcat.catalog.checks import ServerVersions, check_server, problems
from embcat.catalog.errors import DatabaseTooOld
from embcat.cli import main


def _versions(**kw: str | None) -> ServerVersions:
    base: dict[str, str | None] = dict(
        postgres="15.20",
        postgis="3.3.2",
        pgvector="0.8.0",
        postgis_available="3.3.2",
        pgvector_available="0.8.0",
    )
    base.update(kw)
    return ServerVersions(**base)  # type: ignore[arg-type]


def test_current_versions_pass() -> None:
    assert problems(_versions()) == []


def test_old_pgvector_is_named() -> None:
    found = problems(_versions(pgvector="0.7.4", pgvector_available="0.7.4"))
    assert found == ["pgvector (extension vector) 0.7.4 is older than 0.8"]


def test_old_postgres_is_named() -> None:
    assert problems(_versions(postgres="14.11")) == ["PostgreSQL 14.11 is older than 15.0"]


def test_database_without_extensions_names_both(make_database: Callable[..., str]) -> None:
    url = make_database(migrated=False, bare=True)
    with psycopg.connect(url) as conn:
        with pytest.raises(DatabaseTooOld) as err:
            check_server(conn)
    message = str(err.value)
    assert "PostGIS (extension postgis) >= 3.3 is not installed" in message
    assert "pgvector (extension vector) >= 0.8 is not installed" in message


def test_real_server_passes_the_check(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        v = check_server(conn)
    assert v.pgvector is not None and v.postgis is not None


def test_cli_db_check_reports_versions_and_revision(database_url: str) -> None:
    result = CliRunner().invoke(main, ["db", "check"], env={"EMBCAT_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert '"up_to_date": true' in result.output


def test_cli_reports_unreachable_database_in_one_line() -> None:
    result = CliRunner().invoke(
        main, ["db", "upgrade"], env={"EMBCAT_DATABASE_URL": "postgresql://x:y@127.0.0.1:1/nope"}
    )
    assert result.exit_code == 1
    assert "unavailable" in result.output
