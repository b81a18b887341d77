"""Auth: scopes, per-collection keys, revocation, hashed secrets that are never logged,
every write route behind the write scope, and the read-only SQL role."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from helpers_server import start_server
from relhelpers import api_settings_for, point_item

# POST operations that only read (search bodies); every other POST/PUT/PATCH/DELETE writes.
READ_ONLY_POSTS = {
    "/search",
    "/collections/{collection_id}/export",
    "/collections/{collection_id}/score",
}
OPEN_PREFIXES = ("/health", "/_mgmt", "/api", "/docs")
WRITE_METHODS = ("post", "put", "patch", "delete")


def _write_operations(database_url: str) -> list[tuple[str, str]]:
    from embcat.api.app import create_app

    spec = create_app(api_settings_for(database_url)).openapi()
    ops = []
    for path, methods in spec["paths"].items():
        for method in methods:
            if method in WRITE_METHODS and not (method == "post" and path in READ_ONLY_POSTS):
                ops.append((method.upper(), path))
    return sorted(ops)


def _read_operations(database_url: str) -> list[tuple[str, str]]:
    from embcat.api.app import create_app

    spec = create_app(api_settings_for(database_url)).openapi()
    ops = []
    for path, methods in spec["paths"].items():
        if path.startswith(OPEN_PREFIXES):
            continue
        for method in methods:
            if method == "get" or (method == "post" and path in READ_ONLY_POSTS):
                ops.append((method.upper(), path))
    return sorted(ops)


def _fill(path: str, collection_id: str) -> str:
    path = path.replace("{collection_id}", collection_id).replace("{item_id}", "item-000")
    return re.sub(r"\{[^}]+\}", "x", path)


def test_openapi_lists_write_operations(database_url: str) -> None:
    ops = _write_operations(database_url)
    assert ("POST", "/collections/{collection_id}/items") in ops
    assert ("DELETE", "/collections/{collection_id}/items/{item_id}") in ops


def test_every_write_operation_needs_a_key(
    database_url: str, rel_server: str, rel_collection: str
) -> None:
    answers = {}
    for method, path in _write_operations(database_url):
        url = rel_server + _fill(path, rel_collection)
        r = httpx.request(method, url, json={}, timeout=10)
        answers[f"{method} {path}"] = r.status_code
    wrong = {op: code for op, code in answers.items() if code != 401}
    assert answers and not wrong, wrong


@pytest.fixture(scope="module")
def read_protected_server(database_url: str, rel_collection: str) -> Iterator[str]:
    handle = start_server(api_settings_for(database_url, require_read_key=True))
    try:
        yield handle.base_url
    finally:
        handle.stop()


def test_every_read_operation_needs_a_key_when_reads_are_protected(
    database_url: str, read_protected_server: str, rel_collection: str
) -> None:
    answers = {}
    for method, path in _read_operations(database_url):
        url = read_protected_server + _fill(path, rel_collection)
        r = httpx.request(method, url, json={} if method == "POST" else None, timeout=10)
        answers[f"{method} {path}"] = r.status_code
    wrong = {op: code for op, code in answers.items() if code != 401}
    assert answers and not wrong, wrong


def test_read_key_reads_when_reads_are_protected(
    read_protected_server: str, rel_collection: str, make_key
) -> None:
    secret = make_key("read", collection=rel_collection)
    r = httpx.get(
        f"{read_protected_server}/collections/{rel_collection}/items/item-000",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 200


def test_unauthorized_answer_is_json_with_challenge(rel_server: str, rel_collection: str) -> None:
    r = httpx.post(f"{rel_server}/collections/{rel_collection}/items", json={})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["code"] == "Unauthorized"


def test_read_key_cannot_write(rel_server: str, rel_collection: str, make_key) -> None:
    secret = make_key("read")
    body = point_item(rel_collection, f"ro-{uuid.uuid4().hex[:6]}")
    r = httpx.post(
        f"{rel_server}/collections/{rel_collection}/items",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 403
    assert r.json()["code"] == "Forbidden"


@pytest.fixture
def written(database_url: str, rel_collection: str) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "delete from items where collection_id = %s and id = any(%s)", (rel_collection, ids)
        )


def test_write_key_writes(rel_server: str, rel_collection: str, make_key, written) -> None:
    secret = make_key("write")
    item_id = f"w-{uuid.uuid4().hex[:6]}"
    written.append(item_id)
    r = httpx.post(
        f"{rel_server}/collections/{rel_collection}/items",
        json=point_item(rel_collection, item_id),
        headers={"X-API-Key": secret},
    )
    assert r.status_code in (200, 201), r.text
    assert (
        httpx.get(f"{rel_server}/collections/{rel_collection}/items/{item_id}").status_code == 200
    )


def test_admin_key_writes(rel_server: str, rel_collection: str, make_key, written) -> None:
    secret = make_key("admin")
    item_id = f"a-{uuid.uuid4().hex[:6]}"
    written.append(item_id)
    r = httpx.post(
        f"{rel_server}/collections/{rel_collection}/items",
        json=point_item(rel_collection, item_id),
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert r.status_code in (200, 201), r.text


def test_collection_key_cannot_write_another_collection(
    rel_server: str, rel_collection: str, other_collection: str, make_key, database_url: str
) -> None:
    secret = make_key("write", collection=rel_collection)
    item_id = f"x-{uuid.uuid4().hex[:6]}"
    r = httpx.post(
        f"{rel_server}/collections/{other_collection}/items",
        json=point_item(other_collection, item_id),
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 403
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select 1 from items where collection_id = %s and id = %s", (other_collection, item_id)
        ).fetchone()
    assert row is None


def test_collection_key_cannot_delete_another_collections_item(
    rel_server: str, rel_collection: str, other_collection: str, make_key
) -> None:
    secret = make_key("write", collection=rel_collection)
    r = httpx.delete(
        f"{rel_server}/collections/{other_collection}/items/item-0",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 403
    assert httpx.get(f"{rel_server}/collections/{other_collection}/items/item-0").status_code == 200


def test_wrong_secret_of_a_real_key_is_401(rel_server: str, rel_collection: str, make_key) -> None:
    secret = make_key("write")
    key_id = secret.split(".", 1)[0]
    r = httpx.post(
        f"{rel_server}/collections/{rel_collection}/items",
        json={},
        headers={"Authorization": f"Bearer {key_id}.{'A' * 43}"},
    )
    assert r.status_code == 401


def test_revoked_key_is_rejected(rel_server: str, rel_collection: str, make_key) -> None:
    from embcat.cli import main

    secret = make_key("write")
    url = f"{rel_server}/collections/{rel_collection}/items"
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.post(url, json={}, headers=headers).status_code == 400  # authorised, bad body
    result = CliRunner().invoke(main, ["keys", "revoke", secret.split(".", 1)[0]])
    assert result.exit_code == 0, result.output
    r = httpx.post(url, json={}, headers=headers)
    assert r.status_code == 401


def test_cli_creates_lists_and_never_stores_the_secret(database_url: str) -> None:
    from embcat.cli import main

    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "cli-test", "--scope", "read"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    key_id = secret.split(".", 1)[0]
    try:
        listed = runner.invoke(main, ["keys", "list", "--json"])
        assert key_id in listed.stdout
        assert secret.split(".", 1)[1] not in listed.stdout
        with psycopg.connect(database_url) as conn:
            row = conn.execute("select * from api_keys where id = %s", (key_id,)).fetchone()
        assert row is not None
        assert all(secret.split(".", 1)[1] not in str(value) for value in row)
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from api_keys where id = %s", (key_id,))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        from embcat.api.observability import JsonFormatter

        if record.name.startswith(("httpx", "httpcore")):
            return  # the test's own HTTP client, not the server

        self.lines.append(JsonFormatter().format(record) + " " + str(record.__dict__))


def test_secrets_never_reach_the_logs(rel_server: str, rel_collection: str, make_key) -> None:
    secret = make_key("write")
    wrong = secret.split(".", 1)[0] + ".wrong-secret-value-0123456789"
    capture = _Capture()
    loggers = [logging.getLogger(), logging.getLogger("embcat.access")]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
    try:
        url = f"{rel_server}/collections/{rel_collection}/items"
        httpx.post(url, json={}, headers={"Authorization": f"Bearer {secret}"})
        httpx.post(url, json={}, headers={"X-API-Key": wrong})
        httpx.get(f"{rel_server}/search", params={"api_key": secret, "limit": 1})
    finally:
        for lg, level in zip(loggers, old_levels, strict=True):
            lg.removeHandler(capture)
            lg.setLevel(level)
    assert capture.lines, "no log records captured (is the access log installed?)"
    for token in (secret.split(".", 1)[1], "wrong-secret-value"):
        assert not [line for line in capture.lines if token in line]


@pytest.fixture
def reader_login(database_url: str) -> Iterator[str]:
    """A temporary login role that is a member of embcat_reader; its URL."""
    from urllib.parse import urlsplit, urlunsplit

    name = f"embcat_rel_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"create role {name} login password '{password}' in role embcat_reader")
    parts = urlsplit(database_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{name}:{password}@{host}:{parts.port or 5432}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"drop role {name}")


def test_reader_role_reads_the_sql_surface(reader_login: str, rel_collection: str) -> None:
    with psycopg.connect(reader_login) as conn:
        n = conn.execute(
            "select count(*) from embcat.item_embeddings where collection_id = %s",
            (rel_collection,),
        ).fetchone()
        hits = conn.execute(
            "select item_id from embcat.similar(%s, 'item-000', 3)", (rel_collection,)
        ).fetchall()
    assert n is not None and n[0] > 0
    assert len(hits) == 3


@pytest.mark.parametrize(
    "statement",
    [
        "insert into collections (id, stac) values ('evil', '{}')",
        "update items set properties = '{}' where collection_id = '{cid}'",
        "delete from embeddings where collection_id = '{cid}'",
        "delete from api_keys",
        "truncate items",
        "create table public.evil (x int)",
        "create table embcat.evil (x int)",
        "select * from api_keys",
    ],
)
def test_reader_role_cannot_write(reader_login: str, rel_collection: str, statement: str) -> None:
    with psycopg.connect(reader_login) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement.replace("{cid}", rel_collection))
