"""Issue 15, findings 15, 16, 17 and 23: the upload spool under concurrent, hostile or
failing use.

- 15: the same chunk sent to two server processes at once is accepted once (the lock is a
  file lock in the spool, shared by every process, not an in-process lock);
- 16: two concurrent commits of one upload: one publishes, the other is a 409 that does
  not name the spool's path;
- 17: a full or unwritable spool answers 507 / 503 with a message;
- 23: shard names that collide with the spool's own files are refused, abandoned uploads
  expire, and one key's uploads are capped together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from shardgen import write_run  # tests/ is on sys.path under pytest

from embcat.catalog.keys import create_key
from embcat.catalog.remote_publish import upload_id_for
from embcat.encoders.manifest import Manifest

BODY_LIMIT = 128 * 1024  # chunks of 64 KiB
SHARD = "shard-00000-of-00002.parquet"


def _key(database_url: str) -> tuple[str, str]:
    with psycopg.connect(database_url) as conn:
        key_id, secret = create_key(conn, "up-" + uuid.uuid4().hex[:6], ["write"])
    return key_id, secret


def _run(tmp_path: Path, n: int = 400) -> Path:
    return write_run(
        tmp_path / f"run-{n}", n, dims=128, seed=7, encoder="uh-" + uuid.uuid4().hex[:8]
    )


def _server(database_url: str, spool: Path, **upload: Any):
    from helpers_server import start_server

    from embcat.api.app import create_app
    from embcat.api.settings import ApiSettings
    from embcat.api.uploads import UploadSettings

    app = create_app(ApiSettings(database_url=database_url, max_body_bytes=BODY_LIMIT))
    app.state.upload_settings = UploadSettings(upload_dir=spool, **upload)
    return start_server(app=app)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def server(database_url: str, spool: Path) -> Iterator[str]:
    handle = _server(database_url, spool)
    try:
        yield handle.base_url
    finally:
        handle.stop()


def _manifest(
    base: str, up: str, secret: str, run: Path, body: bytes | None = None
) -> httpx.Response:
    return httpx.put(
        f"{base}/publish/uploads/{up}/manifest",
        content=body if body is not None else (run / "manifest.json").read_bytes(),
        headers={"X-API-Key": secret},
    )


def _upload_all(base: str, up: str, secret: str, run: Path) -> None:
    headers = {"X-API-Key": secret}
    assert _manifest(base, up, secret, run).status_code == 200
    chunk = httpx.get(f"{base}/publish/uploads/{up}", headers=headers).json()["chunk_bytes"]
    for rec in Manifest.load(run).shards:
        data = (run / rec.path).read_bytes()
        for offset in range(0, len(data), chunk):
            r = httpx.put(
                f"{base}/publish/uploads/{up}/shards/{rec.path}",
                params={"offset": offset}, content=data[offset : offset + chunk],
                headers=headers,
            )  # fmt: skip
            assert r.status_code == 200, r.text


# ----------------------------------------------------------------- 15: two server processes


def _process(database_url: str, spool: Path) -> Iterator[str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "EMBCAT_DATABASE_URL": database_url,
        "EMBCAT_UPLOAD_DIR": str(spool),
        "EMBCAT_MAX_BODY_BYTES": str(BODY_LIMIT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "embcat.api.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the API process did not start")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def two_processes(database_url: str, spool: Path) -> Iterator[tuple[str, str]]:
    a = _process(database_url, spool)
    b = _process(database_url, spool)
    try:
        yield next(a), next(b)
    finally:
        for gen in (a, b):
            next(gen, None)


def test_same_chunk_to_two_processes_is_accepted_once(
    tmp_path: Path, two_processes: tuple[str, str], database_url: str
) -> None:
    first, second = two_processes
    _, secret = _key(database_url)
    run = _run(tmp_path)
    up = upload_id_for(Manifest.load(run).checksum())
    assert _manifest(first, up, secret, run).status_code == 200
    headers = {"X-API-Key": secret}
    chunk = httpx.get(f"{first}/publish/uploads/{up}", headers=headers).json()["chunk_bytes"]
    piece = (run / SHARD).read_bytes()[:chunk]
    url = f"/publish/uploads/{up}/shards/{SHARD}"
    answers: list[int] = []

    def slow() -> Iterator[bytes]:
        time.sleep(1.0)  # the headers are sent: the first request is in, its body waits
        yield piece

    def send_slow() -> None:
        r = httpx.put(first + url, params={"offset": 0}, content=slow(), headers=headers,
                      timeout=30)  # fmt: skip
        answers.append(r.status_code)

    t = threading.Thread(target=send_slow)
    t.start()
    time.sleep(0.4)
    r = httpx.put(second + url, params={"offset": 0}, content=piece, headers=headers, timeout=30)
    answers.append(r.status_code)
    t.join()
    assert sorted(answers) == [200, 409]
    state = httpx.get(f"{second}/publish/uploads/{up}", headers=headers).json()
    assert state["shards"][SHARD]["received"] == chunk


# ----------------------------------------------------------------- 16: concurrent commits


def test_concurrent_commits_publish_once_and_do_not_leak_the_spool(
    tmp_path: Path, server: str, spool: Path, database_url: str
) -> None:
    _, secret = _key(database_url)
    run = _run(tmp_path)
    up = upload_id_for(Manifest.load(run).checksum())
    _upload_all(server, up, secret, run)
    cid = "commit2-" + uuid.uuid4().hex[:8]
    answers: list[httpx.Response] = []

    def commit() -> None:
        answers.append(
            httpx.post(
                f"{server}/publish/uploads/{up}/commit",
                params={"collection": cid},
                headers={"X-API-Key": secret},
                timeout=60,
            )  # fmt: skip
        )

    threads = [threading.Thread(target=commit) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in answers)
    assert codes in ([200, 404], [200, 409]), [r.text for r in answers]
    assert all(str(spool) not in r.text for r in answers)


# ----------------------------------------------------------------- 17: spool full / read-only


def test_full_spool_is_a_507(tmp_path: Path, server: str, spool: Path, database_url: str) -> None:
    key_id, secret = _key(database_url)
    run = _run(tmp_path)
    up = upload_id_for(Manifest.load(run).checksum())
    assert _manifest(server, up, secret, run).status_code == 200
    (spool / key_id / up / (SHARD + ".part")).symlink_to("/dev/full")  # writes: ENOSPC
    r = httpx.put(
        f"{server}/publish/uploads/{up}/shards/{SHARD}", params={"offset": 0},
        content=b"x" * 1000, headers={"X-API-Key": secret},
    )  # fmt: skip
    assert r.status_code == 507, r.text
    assert "full" in r.json()["description"]


def test_unwritable_spool_is_a_503(tmp_path: Path, database_url: str) -> None:
    handle = _server(database_url, Path("/sys/embcat-spool-test"))  # EPERM on mkdir
    try:
        _, secret = _key(database_url)
        run = _run(tmp_path, 20)
        up = upload_id_for(Manifest.load(run).checksum())
        r = _manifest(handle.base_url, up, secret, run)
    finally:
        handle.stop()
    assert r.status_code == 503, r.text
    assert "EMBCAT_UPLOAD_DIR" in r.json()["description"]


# ----------------------------------------------------------------- 23: names, expiry, cap


def _renamed(run: Path, names: list[str]) -> bytes:
    doc = json.loads((run / "manifest.json").read_text())
    for rec, name in zip(doc["shards"], names, strict=False):
        rec["path"] = name
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "names",
    [["manifest.json"], ["Manifest.JSON"], ["x.parquet", "x.parquet.part"]],
    ids=["manifest", "manifest-case", "part-beside-shard"],
)
def test_shard_names_of_the_spools_own_files_are_refused(
    tmp_path: Path, server: str, database_url: str, names: list[str]
) -> None:
    _, secret = _key(database_url)
    run = _run(tmp_path, 20)
    r = _manifest(server, "names-" + uuid.uuid4().hex[:6], secret, run, _renamed(run, names))
    assert r.status_code == 400, r.text


def test_abandoned_uploads_expire(
    tmp_path: Path, server: str, spool: Path, database_url: str
) -> None:
    key_id, secret = _key(database_url)
    old_run = _run(tmp_path, 20)
    old = upload_id_for(Manifest.load(old_run).checksum())
    assert _manifest(server, old, secret, old_run).status_code == 200
    folder = spool / key_id / old
    long_ago = time.time() - 8 * 24 * 3600
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (long_ago, long_ago))
    new_run = _run(tmp_path, 40)
    assert _manifest(server, "fresh-" + uuid.uuid4().hex[:6], secret, new_run).status_code == 200
    assert not folder.exists()


def test_one_keys_uploads_are_capped_together(
    tmp_path: Path, database_url: str, spool: Path
) -> None:
    run_a, run_b = _run(tmp_path, 400), _run(tmp_path, 401)
    one_run = sum(s.bytes for s in Manifest.load(run_a).shards)
    handle = _server(database_url, spool, upload_key_max_bytes=int(one_run * 1.5))
    try:
        _, secret = _key(database_url)
        first = _manifest(handle.base_url, "cap-a", secret, run_a)
        second = _manifest(handle.base_url, "cap-b", secret, run_b)
    finally:
        handle.stop()
    assert first.status_code == 200, first.text
    assert second.status_code == 507, second.text
    assert "delete" in second.json()["description"]


# ----------------------------------------------------------------- 22: a DML-only server role


@pytest.fixture
def dml_only_url(database_url: str) -> Iterator[str]:
    """A login role with SELECT/INSERT/UPDATE/DELETE on the tables and nothing more (no
    CREATE, not the tables' owner: it cannot build a new space's index)."""
    from urllib.parse import urlsplit, urlunsplit

    name = f"embcat_dml_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"create role {name} login password '{password}' connection limit 8")
        conn.execute(f"grant usage on schema public to {name}")
        conn.execute(
            f"grant select, insert, update, delete on all tables in schema public to {name}"
        )
        conn.execute(f"grant usage, select on all sequences in schema public to {name}")
    parts = urlsplit(database_url)
    netloc = f"{name}:{password}@{parts.hostname or '127.0.0.1'}:{parts.port or 5432}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                (name,),
            )
            conn.execute(f"revoke all on all tables in schema public from {name}")
            conn.execute(f"revoke all on all sequences in schema public from {name}")
            conn.execute(f"revoke usage on schema public from {name}")
            conn.execute(f"drop role {name}")


def test_publish_of_a_new_space_by_a_dml_only_server_role_is_a_503(
    tmp_path: Path, dml_only_url: str, spool: Path, database_url: str
) -> None:
    _, secret = _key(database_url)
    run = _run(tmp_path, 40)
    up = upload_id_for(Manifest.load(run).checksum())
    handle = _server(dml_only_url, spool)
    try:
        _upload_all(handle.base_url, up, secret, run)
        r = httpx.post(
            f"{handle.base_url}/publish/uploads/{up}/commit",
            params={"collection": "dml-" + uuid.uuid4().hex[:8]},
            headers={"X-API-Key": secret}, timeout=60,
        )  # fmt: skip
    finally:
        handle.stop()
    assert r.status_code == 503, r.text
    assert "privilege" in r.json()["description"]
