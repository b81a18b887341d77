"""Property-based fuzzing of every operation in the OpenAPI document (schemathesis, bounded
examples) against the live API over a small loaded collection: no answer is a 5xx.

Every operation is fuzzed twice: without a key (writes must answer 401/4xx, never 5xx),
and with an admin key, so that the fuzzed bodies reach the handlers (issue 15: all 267
server errors of the authenticated round were there). The authenticated run writes: it
runs on a database of its own, so that what it creates never meets the other tests."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

MAX_EXAMPLES = 8


def _openapi() -> dict:
    """The OpenAPI document of the app as ``create_app`` builds it (nothing connects)."""
    from embcat.api.app import create_app
    from embcat.api.settings import ApiSettings

    return create_app(ApiSettings(database_url="postgresql://unused@127.0.0.1:1/x")).openapi()


# Loaded at collection time from the document itself (schemathesis' lazy fixture loader does
# not work with pytest 9); the requests go to the live server of the session.
# Only the fuzzing phase (positive and negative data), bounded by MAX_EXAMPLES per
# operation; the coverage phase enumerates boundary values without a bound.
CONFIG = SchemathesisConfig.from_dict(
    {"phases": {"coverage": {"enabled": False}, "examples": {"enabled": False}}}
)
# Every operation is fuzzed; test_openapi_declares_every_path_parameter checks that each
# declares its path parameters (an undeclared one could not be generated).
OPENAPI = _openapi()
UNDECLARED = [
    (method, path)
    for path, methods in OPENAPI["paths"].items()
    for method, op in methods.items()
    if set(re.findall(r"\{(\w+)\}", path))
    - {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
]
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)


def test_openapi_declares_every_path_parameter() -> None:
    assert UNDECLARED == []


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: schemathesis.Case, rel_server: str) -> None:
    case.call_and_validate(base_url=rel_server, checks=[not_a_server_error], timeout=30)


@pytest.fixture(scope="module")
def fuzz_database(database_url: str) -> Iterator[str]:
    """A migrated database of this module's own (cloned from the template, as the
    session's), with a small loaded collection; dropped afterwards."""
    from relhelpers import DIMS, vector_connection
    from vectorgen import clustered_vectors, load_collection

    from embcat.catalog import migrate
    from embcat.catalog.settings import DatabaseSettings

    parts = urlsplit(database_url)
    name = f"embcat_fuzz_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        # The template the session database was cloned from (it holds the extensions).
        found = conn.execute(
            "select datname from pg_database where datname = 'embcat_template'"
        ).fetchone()
        template = ' template "embcat_template"' if found else ""
        conn.execute(f'create database "{name}"{template}')
    url = urlunsplit(parts._replace(path="/" + name))
    try:
        migrate.upgrade(DatabaseSettings(database_url=url))
        with vector_connection(url) as conn:
            load_collection(conn, "fuzz", clustered_vectors(30, DIMS, clusters=3, seed=21))
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="module")
def keyed_server(fuzz_database: str) -> Iterator[tuple[str, str]]:
    """(base URL, admin key) of the API on the fuzzing database."""
    from helpers_server import start_server
    from relhelpers import api_settings_for

    from embcat.catalog.keys import create_key

    with psycopg.connect(fuzz_database) as conn:
        _, secret = create_key(conn, "schemathesis", ["admin"])
    handle = start_server(api_settings_for(fuzz_database))
    try:
        yield handle.base_url, secret
    finally:
        handle.stop()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors_with_an_admin_key(
    case: schemathesis.Case, keyed_server: tuple[str, str]
) -> None:
    base, secret = keyed_server
    case.call_and_validate(
        base_url=base,
        headers={"Authorization": f"Bearer {secret}"},
        checks=[not_a_server_error],
        timeout=30,
    )
