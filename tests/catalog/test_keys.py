"""API keys: hashed secrets, scopes, collection limits, revocation, CLI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from embcat.catalog.errors import InvalidInput, Unauthorized
from embcat.catalog.keys import create_key, list_keys, revoke_key, verify
from embcat.cli import main


def test_created_key_verifies_with_its_scopes(conn) -> None:
    key_id, secret = create_key(conn, "ci", ["write"])
    principal = verify(conn, secret)
    assert principal.key_id == key_id
    assert principal.allows("write") and principal.allows("read")
    assert not principal.allows("admin")


def test_secret_is_not_stored(conn) -> None:
    _, secret = create_key(conn, "ci", ["read"])
    token = secret.split(".", 1)[1]
    stored = conn.execute("select secret_hash from api_keys").fetchall()
    assert all(token not in row[0] for row in stored)


def test_wrong_secret_is_unauthorized(conn) -> None:
    key_id, _ = create_key(conn, "ci", ["read"])
    with pytest.raises(Unauthorized):
        verify(conn, f"{key_id}.not-the-secret")


def test_revoked_key_is_unauthorized(conn) -> None:
    key_id, secret = create_key(conn, "ci", ["read"])
    revoke_key(conn, key_id)
    with pytest.raises(Unauthorized):
        verify(conn, secret)


def test_unknown_scope_is_invalid(conn) -> None:
    with pytest.raises(InvalidInput):
        create_key(conn, "ci", ["root"])


def test_collection_limited_key_allows_only_its_collection(conn) -> None:
    conn.execute("insert into collections (id, stac) values ('keys-c', '{}'::jsonb)")
    _, secret = create_key(conn, "ci", ["write"], collection_id="keys-c")
    principal = verify(conn, secret)
    assert principal.allows("write", "keys-c")
    assert not principal.allows("write", "other")
    assert not principal.allows("write", None)


def test_list_never_shows_secrets(conn) -> None:
    _, secret = create_key(conn, "ci", ["read"])
    listed = [k.as_dict() for k in list_keys(conn)]
    assert secret not in repr(listed)


def test_cli_create_list_revoke(database_url) -> None:
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "cli-key", "--scope", "write"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    key_id = secret.split(".", 1)[0]
    listed = runner.invoke(main, ["keys", "list"])
    assert key_id in listed.stdout and secret.split(".", 1)[1] not in listed.stdout
    assert runner.invoke(main, ["keys", "revoke", key_id]).exit_code == 0
    assert runner.invoke(main, ["keys", "revoke", "k_nope"]).exit_code == 1
