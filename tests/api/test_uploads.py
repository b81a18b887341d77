"""Remote publishing to a real API server on loopback (issue 4, part 4)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from shardgen import write_run  # tests/ is on sys.path under pytest

from embcat.catalog.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from embcat.catalog.keys import create_key
from embcat.catalog.remote_publish import remote_publish, upload_id_for
from embcat.encoders.manifest import Manifest


@pytest.fixture(scope="module")
def upload_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API with a small body limit, so that shards travel in several chunks."""
    import os

    from helpers_server import start_server

    from embcat.api.settings import ApiSettings

    spool = tmp_path_factory.mktemp("spool")
    old = os.environ.get("EMBCAT_UPLOAD_DIR")
    os.environ["EMBCAT_UPLOAD_DIR"] = str(spool)
    handle = start_server(ApiSettings(database_url=database_url, max_body_bytes=128 * 1024))
    try:
        yield handle.base_url
    finally:
        handle.stop()
        if old is None:
            os.environ.pop("EMBCAT_UPLOAD_DIR", None)
        else:
            os.environ["EMBCAT_UPLOAD_DIR"] = old


def _key(database_url: str, scopes: list[str], collection_id: str | None = None) -> str:
    with psycopg.connect(database_url) as conn:
        if collection_id is not None:
            conn.execute(
                "insert into collections (id, stac) values (%s, '{}') on conflict do nothing",
                (collection_id,),
            )
        _, secret = create_key(conn, "test-" + uuid.uuid4().hex[:6], scopes, collection_id)
        conn.commit()
    return secret


def _run(tmp_path: Path, n: int = 400) -> Path:
    # 128-d float32 vectors, ~110 kB per shard: two 64 kB chunks at a 128 kB body limit
    return write_run(tmp_path / "run", n, dims=128, seed=7, encoder="up-" + uuid.uuid4().hex[:8])


def _count(database_url: str, cid: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select count(*) from items where collection_id = %s", (cid,)).fetchone()
    assert row is not None
    return int(row[0])


def test_remote_publish_loads_the_run(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    key = _key(database_url, ["write"])
    cid = "remote-" + uuid.uuid4().hex[:8]
    res = remote_publish(_run(tmp_path), upload_server, key=key, collection_id=cid)
    assert (res["rows"], res["inserted"]) == (400, 400)
    assert "published 400 rows" in res["summary"]
    assert _count(database_url, cid) == 400


def test_upload_without_a_key_is_rejected(tmp_path: Path, upload_server: str) -> None:
    run = _run(tmp_path)
    up = upload_id_for(Manifest.load(run).checksum())
    resp = httpx.put(
        f"{upload_server}/publish/uploads/{up}/manifest",
        content=(run / "manifest.json").read_bytes(),
    )
    assert resp.status_code == 401
    assert "write" in resp.json()["description"]


def test_read_only_key_cannot_publish(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    key = _key(database_url, ["read"])
    with pytest.raises(Forbidden, match="write"):
        remote_publish(_run(tmp_path), upload_server, key=key)


def test_unknown_key_is_unauthorized(tmp_path: Path, upload_server: str) -> None:
    with pytest.raises(Unauthorized):
        remote_publish(_run(tmp_path), upload_server, key="nope.nope")


def test_collection_scoped_key_cannot_publish_elsewhere(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    mine = "scoped-" + uuid.uuid4().hex[:8]
    key = _key(database_url, ["write"], collection_id=mine)
    other = "other-" + uuid.uuid4().hex[:8]
    with pytest.raises(Forbidden, match=other):
        remote_publish(_run(tmp_path), upload_server, key=key, collection_id=other)
    assert _count(database_url, other) == 0


def test_interrupted_upload_resumes_without_resending(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    key = _key(database_url, ["write"])
    run = _run(tmp_path)
    cid = "resume-" + uuid.uuid4().hex[:8]
    with pytest.raises(InterruptedError):
        remote_publish(run, upload_server, key=key, collection_id=cid, max_chunks=3)
    assert _count(database_url, cid) == 0
    total = sum(s.bytes for s in Manifest.load(run).shards)
    state: dict[str, Any] = httpx.get(
        f"{upload_server}/publish/uploads/{upload_id_for(Manifest.load(run).checksum())}",
        headers={"X-API-Key": key},
    ).json()
    held = sum(s["received"] for s in state["shards"].values())
    assert 0 < held < total
    assert state["shards"]["shard-00000-of-00002.parquet"]["complete"]
    res = remote_publish(run, upload_server, key=key, collection_id=cid)
    assert res["uploaded_bytes"] == total - held
    assert res["inserted"] == 400 and _count(database_url, cid) == 400


def test_corrupted_shard_is_refused_by_the_server(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    key = _key(database_url, ["write"])
    run = _run(tmp_path)
    up = upload_id_for(Manifest.load(run).checksum())
    headers = {"X-API-Key": key}
    base = f"{upload_server}/publish/uploads/{up}"
    assert httpx.put(base + "/manifest", content=(run / "manifest.json").read_bytes(),
                     headers=headers).status_code == 200  # fmt: skip
    name = "shard-00001-of-00002.parquet"
    data = bytearray((run / name).read_bytes())
    data[-20] ^= 0xFF
    chunk = httpx.get(base, headers=headers).json()["chunk_bytes"]
    offset = 0
    resp = None
    while offset < len(data):
        piece = bytes(data[offset : offset + chunk])
        resp = httpx.put(f"{base}/shards/{name}", params={"offset": offset}, content=piece,
                         headers=headers)  # fmt: skip
        if resp.status_code != 200:
            break
        offset += len(piece)
    assert resp is not None and resp.status_code == 400
    assert "sha256" in resp.json()["description"]
    assert httpx.get(base, headers=headers).json()["shards"][name]["received"] == 0


def test_path_traversal_in_upload_id_is_refused(upload_server: str, database_url: str) -> None:
    key = _key(database_url, ["write"])
    resp = httpx.get(f"{upload_server}/publish/uploads/..%2F..%2Fetc", headers={"X-API-Key": key})
    assert resp.status_code in (400, 404)
    resp = httpx.get(f"{upload_server}/publish/uploads/a.b", headers={"X-API-Key": key})
    assert resp.status_code == 400


def test_model_link_serves_the_mlm_item(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    key = _key(database_url, ["write"])
    cid = "model-" + uuid.uuid4().hex[:8]
    remote_publish(_run(tmp_path, 20), upload_server, key=key, collection_id=cid)
    body = httpx.get(f"{upload_server}/collections/{cid}/model").json()
    import pystac
    from pystac.extensions.mlm import MLMExtension

    item = pystac.Item.from_dict(body)
    assert MLMExtension.has_extension(item)
    assert item.properties["mlm:name"].startswith("up-")
    assert item.properties["embcat:space"]["dimensions"] == 128


# -- checks before the first byte (issue 14): scope, collection id and space -------------


def _held(upload_server: str, key: str, run: Path) -> dict[str, Any]:
    up = upload_id_for(Manifest.load(run).checksum())
    resp = httpx.get(f"{upload_server}/publish/uploads/{up}", headers={"X-API-Key": key})
    assert resp.status_code == 200
    return resp.json()


def _received(state: dict[str, Any]) -> int:
    return sum(s["received"] for s in state["shards"].values())


def test_scoped_key_is_refused_before_any_shard_is_sent(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    key = _key(database_url, ["write"], collection_id="scoped-" + uuid.uuid4().hex[:8])
    other = "other-" + uuid.uuid4().hex[:8]
    run = _run(tmp_path)
    with pytest.raises(Forbidden, match=other):
        remote_publish(run, upload_server, key=key, collection_id=other)
    assert _received(_held(upload_server, key, run)) == 0


def _options_run(tmp_path: Path, encoder: str, prefix: str, seed: int) -> Path:
    return write_run(
        tmp_path / prefix, 400, dims=128, seed=seed, encoder=encoder, id_prefix=prefix,
        options={"seed": seed, "num_features": 64},
    )  # fmt: skip


def test_run_of_another_space_is_refused_before_any_shard_is_sent(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    """D1 through the upload: a seed-1 run into a seed-0 collection, named at once."""
    key = _key(database_url, ["write"])
    cid = "space-" + uuid.uuid4().hex[:8]
    encoder = "up-" + uuid.uuid4().hex[:8]
    first = _options_run(tmp_path, encoder, "a", 0)
    remote_publish(first, upload_server, key=key, collection_id=cid)
    second = _options_run(tmp_path, encoder, "b", 1)
    with pytest.raises(Conflict, match=r"options\.seed: 0 vs 1"):
        remote_publish(second, upload_server, key=key, collection_id=cid)
    assert _received(_held(upload_server, key, second)) == 0
    assert _count(database_url, cid) == 400


def test_invalid_collection_id_is_refused_before_any_shard_is_sent(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    key = _key(database_url, ["write"])
    run = _run(tmp_path)
    with pytest.raises(InvalidInput, match="collection id"):
        remote_publish(run, upload_server, key=key, collection_id="with space")
    assert _received(_held(upload_server, key, run)) == 0


def test_upload_creation_checks_the_target_over_http(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    key = _key(database_url, ["write"], collection_id="mine-" + uuid.uuid4().hex[:8])
    run = _run(tmp_path)
    up = upload_id_for(Manifest.load(run).checksum())
    resp = httpx.put(
        f"{upload_server}/publish/uploads/{up}/manifest",
        params={"collection": "elsewhere"},
        content=(run / "manifest.json").read_bytes(),
        headers={"X-API-Key": key},
    )
    assert resp.status_code == 403
    assert "elsewhere" in resp.json()["description"]


@pytest.mark.parametrize("bad", ["with space", ""])
def test_commit_with_an_invalid_collection_id_is_400(
    tmp_path: Path, upload_server: str, database_url: str, bad: str
) -> None:
    from embcat.catalog.errors import InvalidInput

    key = _key(database_url, ["write"])
    with pytest.raises(InvalidInput, match="HTTP 400.*collection id"):
        remote_publish(_run(tmp_path, 20), upload_server, key=key, collection_id=bad)


def test_a_key_scoped_to_a_reserved_collection_publishes_into_it(
    tmp_path: Path, upload_server: str, database_url: str
) -> None:
    from embcat.catalog.collections import reserve_collection

    cid = "reserved-" + uuid.uuid4().hex[:8]
    with psycopg.connect(database_url) as conn:
        reserve_collection(conn, cid)
        _, key = create_key(conn, "hpc", ["write"], cid)
        conn.commit()
    res = remote_publish(_run(tmp_path, 20), upload_server, key=key, collection_id=cid)
    assert res["inserted"] == 20 and _count(database_url, cid) == 20
