"""``embcat collections create|list|delete`` and write keys for a reserved collection."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from shardgen import write_run

from embcat.catalog.collections import reserve_collection
from embcat.catalog.errors import Conflict, InvalidInput
from embcat.catalog.keys import create_key
from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings
from embcat.cli import main


def _name() -> str:
    return "c" + uuid.uuid4().hex[:10]


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_create_reserves_an_empty_collection_listed_without_a_space(database_url) -> None:
    cid = _name()
    created = _cli("collections", "create", cid, "--title", "New run")
    assert created.exit_code == 0, created.output
    listed = json.loads(_cli("collections", "list", "--json").stdout)
    mine = [c for c in listed if c["id"] == cid]
    assert mine == [
        {**mine[0], "id": cid, "title": "New run", "items": 0, "space": None, "reserved": True}
    ]


def test_a_write_key_can_be_limited_to_a_reserved_collection(database_url) -> None:
    cid = _name()
    assert _cli("collections", "create", cid).exit_code == 0
    made = _cli("keys", "create", "hpc", "--scope", "write", "--collection", cid)
    assert made.exit_code == 0, made.output
    listed = _cli("keys", "list").stdout
    assert f"collection={cid}" in listed


def test_a_key_for_a_collection_that_is_not_reserved_is_refused(database_url) -> None:
    made = _cli("keys", "create", "hpc", "--scope", "write", "--collection", _name())
    assert made.exit_code == 1
    assert "embcat collections create" in made.stderr


def test_first_publish_into_a_reserved_collection_sets_its_space(
    tmp_path: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    cid = _name()
    with psycopg.connect(database_url) as conn:
        reserve_collection(conn, cid, title="Kept title")
        conn.commit()
    run = write_run(tmp_path / "run", 12, dims=8, seed=3, encoder=_name())
    result = publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert result.inserted == 12
    with psycopg.connect(database_url) as conn:
        stac, space = conn.execute(
            "select stac, space_id from collections where id = %s", (cid,)
        ).fetchone()  # type: ignore[misc]
    assert space == result.space_id
    assert stac["title"] == "Kept title"
    assert stac["extent"]["spatial"]["bbox"][0] != [-180.0, -90.0, 180.0, 90.0]
    assert "embcat:reserved" not in stac


def test_create_refuses_an_existing_id(conn) -> None:
    cid = _name()
    reserve_collection(conn, cid)
    with pytest.raises(Conflict, match="already exists"):
        reserve_collection(conn, cid)


def test_create_refuses_an_id_the_database_would_refuse(conn) -> None:
    with pytest.raises(InvalidInput, match="invalid collection id 'with space'"):
        reserve_collection(conn, "with space")


def test_delete_removes_items_keys_and_mirror_state(
    tmp_path: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    cid = _name()
    run = write_run(tmp_path / "run", 10, dims=8, seed=4, encoder=_name())
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    with psycopg.connect(database_url) as conn:
        create_key(conn, "scoped", ["write"], cid)
        conn.execute(
            "insert into mirror_state (remote_url, remote_collection, collection_id, phase,"
            " dtype) values ('http://127.0.0.1:9/', 'remote', %s, 'incremental', 'float32')",
            (cid,),
        )
        conn.commit()
    deleted = _cli("collections", "delete", cid, "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert "10 items, 1 keys, 1 mirror" in deleted.stdout
    with psycopg.connect(database_url) as conn:
        left = conn.execute(
            "select (select count(*) from collections where id = %(c)s)"
            " + (select count(*) from items where collection_id = %(c)s)"
            " + (select count(*) from api_keys where collection_id = %(c)s)"
            " + (select count(*) from mirror_state where collection_id = %(c)s)",
            {"c": cid},
        ).fetchone()
    assert left == (0,)


def test_delete_of_an_unknown_collection_is_one_line(database_url) -> None:
    deleted = _cli("collections", "delete", _name(), "--yes")
    assert deleted.exit_code == 1
    assert deleted.stderr.count("\n") == 1 and "does not exist" in deleted.stderr
