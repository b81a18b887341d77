"""Atomicity and locking of the publish job: SIGKILL mid-load, per-collection serialisation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from shardgen import write_run  # tests/ is on sys.path under pytest

from embcat.catalog.publish import PublishResult, publish
from embcat.catalog.settings import DatabaseSettings

EMBCAT = str(Path(sys.executable).parent / "embcat")


def _snapshot(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as c:
        out: dict[str, Any] = {}
        for t in ("collections", "items", "embeddings", "embedding_spaces", "publishes"):
            out[t] = c.execute(f"select count(*) from {t}").fetchone()
        out["seq"] = c.execute("select coalesce(sum(change_seq), 0) from items").fetchone()
        out["indexes"] = c.execute(
            "select count(*) from pg_indexes where tablename = 'embeddings'"
        ).fetchone()
        return out


def _wait_for(url: str, query: str, timeout: float = 60.0) -> tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as c:
        while time.monotonic() < deadline:
            row = c.execute(query).fetchone()
            if row is not None:
                return tuple(row)
            time.sleep(0.01)
    raise AssertionError(f"timed out waiting for: {query}")


def test_sigkill_during_copy_leaves_the_catalogue_unchanged(
    tmp_path: Path, database_url: str
) -> None:
    run = write_run(tmp_path / "big", 20_000, dims=256, seed=9, shards=2, encoder="kill-me")
    before = _snapshot(database_url)
    dbname = database_url.rsplit("/", 1)[1]
    proc = subprocess.Popen(
        [EMBCAT, "publish", str(run), "--collection", "killed", "--no-progress"],
        env={**os.environ, "EMBCAT_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        copied = _wait_for(
            database_url,
            "select p.tuples_processed from pg_stat_progress_copy p"
            f" where p.datname = '{dbname}' and p.tuples_processed > 0",
        )
        assert copied[0] > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # the server notices the dead client and rolls its transaction back
    _wait_for(
        database_url,
        "select 1 where not exists (select 1 from pg_stat_activity"
        f" where datname = '{dbname}' and query ilike 'COPY publish_staging%')",
    )
    assert _snapshot(database_url) == before


def test_sigkill_after_staging_before_commit_leaves_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """Killed while the collection and space rows exist only in its open transaction."""
    run = write_run(tmp_path / "run", 200, dims=8, seed=10, encoder="kill-" + uuid.uuid4().hex[:6])
    before = _snapshot(database_url)
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(hashtext('embcat-publish-merge'))")
        proc = subprocess.Popen(
            [EMBCAT, "publish", str(run), "--collection", "killed2", "--no-progress"],
            env={**os.environ, "EMBCAT_DATABASE_URL": database_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for(
                database_url,
                "select 1 from pg_stat_activity where datname = current_database()"
                " and wait_event_type = 'Lock'"
                " and wait_event = 'advisory' and query ilike '%embcat-publish-merge%'",
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
            holder.execute("select pg_advisory_unlock(hashtext('embcat-publish-merge'))")
    _wait_for(
        database_url,
        "select 1 where not exists (select 1 from pg_stat_activity"
        " where datname = current_database() and wait_event = 'advisory'"
        " and query ilike '%embcat-publish-merge%')",
    )
    assert _snapshot(database_url) == before


def _publish_in_thread(
    run: Path, cid: str, settings: DatabaseSettings, out: dict[str, Any], mode: str = "ignore"
) -> threading.Thread:
    def work() -> None:
        try:
            out["result"] = publish(
                run,
                collection_id=cid,
                settings=settings,
                progress=False,
                mode=mode,  # type: ignore[arg-type]
            )
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    return t


def test_publishes_to_one_collection_serialise_others_proceed(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    url = db_settings.database_url
    enc = "lock-" + uuid.uuid4().hex[:6]
    busy, free = "busy-" + uuid.uuid4().hex[:6], "free-" + uuid.uuid4().hex[:6]
    run_a = write_run(tmp_path / "a", 50, dims=8, seed=11, encoder=enc)
    run_b = write_run(tmp_path / "b", 50, dims=8, seed=12, encoder=enc)
    # A second session holds the collection's publish lock, like a running publish would.
    with psycopg.connect(url) as holder:
        holder.execute("select pg_advisory_xact_lock(hashtext('embcat-publish:' || %s))", (busy,))
        out_a: dict[str, Any] = {}
        thread_a = _publish_in_thread(run_a, busy, db_settings, out_a)
        _wait_for(
            url,
            "select 1 from pg_stat_activity where datname = current_database()"
            " and wait_event = 'advisory' and query ilike '%embcat-publish:%'",
        )
        res_b = publish(run_b, collection_id=free, settings=db_settings, progress=False)
        assert res_b.inserted == 50  # another collection is not held up
        assert thread_a.is_alive() and not out_a  # the same collection waits
        holder.rollback()  # releases the lock
    thread_a.join(60)
    result = out_a.get("result")
    assert isinstance(result, PublishResult), out_a.get("error")
    assert result.inserted == 50


@pytest.mark.parametrize("mode", ["ignore", "upsert"])
def test_concurrent_identical_publishes_insert_once(
    tmp_path: Path, db_settings: DatabaseSettings, mode: str
) -> None:
    run = write_run(tmp_path / "run", 60, dims=8, seed=13, encoder="dup-" + uuid.uuid4().hex[:6])
    cid = "twice-" + uuid.uuid4().hex[:6]
    outs: list[dict[str, Any]] = [{}, {}]
    threads = [_publish_in_thread(run, cid, db_settings, out, mode) for out in outs]
    for t in threads:
        t.join(60)
    results = [o.get("result") for o in outs]
    assert all(isinstance(r, PublishResult) for r in results), outs
    assert sorted(r.inserted for r in results if r) == [0, 60]
