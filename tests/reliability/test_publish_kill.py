"""A publish killed with SIGKILL during its HNSW index build leaves no backend running
(issue 15, finding 9).

Without ``client_connection_check_interval`` the backend of a killed publish goes on
building the index (holding the publish lock, the merge lock and a lock on ``embeddings``)
until the build ends, and only then notices that its client is gone. With it, the backend
checks its socket every ``client_connection_check_interval_ms`` (2 s by default) and stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from shardgen import write_run

ROWS, DIMS = 40_000, 192  # an index build of many seconds on the development machine
GONE_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("kill") / "run", ROWS, dims=DIMS, seed=9, shards=2)


def _backend_alive(url: str, pid: int) -> bool:
    with psycopg.connect(url, autocommit=True) as c:
        return (
            c.execute("select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone()
            is not None
        )


def test_sigkilled_publish_during_index_build_leaves_no_backend(
    big_run: Path, make_database: Callable[..., str]
) -> None:
    url = make_database()
    env = {**os.environ, "EMBCAT_DATABASE_URL": url}
    cmd = [sys.executable, "-m", "embcat.cli", "publish", str(big_run), "--collection", "k",
           "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = None
    try:
        deadline = time.monotonic() + 240
        with psycopg.connect(url, autocommit=True) as c:
            while pid is None and time.monotonic() < deadline and proc.poll() is None:
                row = c.execute(
                    "select pid from pg_stat_progress_create_index"
                    " where datname = current_database()"
                ).fetchone()
                pid = row[0] if row else None
                time.sleep(0.05)
        assert pid is not None, "the publish never reached its index build"
        time.sleep(0.5)
        assert _backend_alive(url, pid)
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    while _backend_alive(url, pid):
        elapsed = time.monotonic() - killed
        assert elapsed < GONE_WITHIN_S, (
            f"the killed publish's backend still runs after {elapsed:.1f} s"
        )
        time.sleep(0.1)
    with psycopg.connect(url, autocommit=True) as c:
        # the locks are free for the next publish, and nothing was committed
        assert c.execute(
            "select pg_try_advisory_lock(hashtext('embcat-publish-merge'))"
        ).fetchone() == (True,)
        assert c.execute("select count(*) from collections").fetchone() == (0,)
