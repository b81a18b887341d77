"""``embcat mirror``'s client side (issue 18 item 4, issue 16 item 8): retries with backoff
on 503/429/connection failures and none on a 400; progress reported through a callback;
one summary line; a mirror interrupted after k pages, rerun, holds exactly the source's
rows (no duplicates). The source is the real API behind fakesource.FakeSource."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from fakesource import Answer, FakeSource, Req
from shardgen import write_run

from embcat.catalog.http import HttpClient, RetryPolicy
from embcat.catalog.mirror import MirrorOptions, MirrorProgress, MirrorResult, RemoteError, mirror
from embcat.catalog.settings import DatabaseSettings

N = 40
FAST_RETRY: dict[str, Any] = {
    "retry_wait_initial_s": 0.01,
    "retry_wait_max_s": 0.05,
    "retry_wait_jitter_s": 0.0,
}


@pytest.fixture(scope="module")
def source_cid(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A collection of N published items (16 dims) in the session's database."""
    from embcat.catalog.publish import publish

    cid = f"mirc-{uuid.uuid4().hex[:8]}"
    run = write_run(tmp_path_factory.mktemp("mirc") / "run", N, dims=16, seed=7)
    publish(run, collection_id=cid, settings=DatabaseSettings(database_url=database_url),
            progress=False)  # fmt: skip
    try:
        yield cid
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


@pytest.fixture
def local(make_database: Callable[..., str]) -> DatabaseSettings:
    return DatabaseSettings(database_url=make_database())


def _opts(base: str, cid: str, **kw: Any) -> MirrorOptions:
    return MirrorOptions(base, cid, **{"page_rows": 15, **FAST_RETRY, **kw})


def _path(req: Req) -> str:
    return urlsplit(req.path).path


def _items(url: str, cid: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return c.execute(
            "select i.id, i.properties, i.assets, e.embedding::text from items i"
            " join embeddings e on e.collection_id = i.collection_id and e.item_id = i.id"
            " where i.collection_id = %s order by i.id",
            (cid,),
        ).fetchall()


def _local_counts(settings: DatabaseSettings) -> tuple[int, ...]:
    with psycopg.connect(settings.database_url) as c:
        return tuple(
            c.execute(f"select count(*) from {t}").fetchone()[0]  # type: ignore[index]
            for t in ("collections", "items", "embeddings", "mirror_state")
        )


def _failing_first(path_end: str, times: int, answer: Answer) -> Callable[[Req], Answer | None]:
    seen = {"n": 0}

    def route(req: Req) -> Answer | None:
        if _path(req).endswith(path_end) and seen["n"] < times:
            seen["n"] += 1
            return answer
        return None

    return route


# ------------------------------------------------------------------ retries


def test_503_then_200_is_retried_and_the_mirror_completes(
    rel_server: str, source_cid: str, local: DatabaseSettings, database_url: str
) -> None:
    busy = Answer(503, {"content-type": "application/json", "retry-after": "0"},
                  b'{"code":"DatabaseUnavailable","description":"busy"}')  # fmt: skip
    with FakeSource(rel_server, _failing_first("/export", 2, busy)) as src:
        result = mirror(_opts(src.base_url, source_cid), local)
    exports = [r for r in src.seen if _path(r).endswith("/export")]
    assert result.upserted == N
    assert len(exports) == 2 + 3  # two 503s, then the three pages of 15
    assert _items(local.database_url, source_cid) == _items(database_url, source_cid)


def test_a_400_is_not_retried(rel_server: str, source_cid: str, local: DatabaseSettings) -> None:
    bad = Answer(400, {"content-type": "application/json"},
                 b'{"code":"InvalidInput","description":"no such thing"}')  # fmt: skip
    with FakeSource(rel_server, _failing_first("/space", 100, bad)) as src:
        with pytest.raises(RemoteError, match="HTTP 400: no such thing"):
            mirror(_opts(src.base_url, source_cid), local)
    assert len([r for r in src.seen if _path(r).endswith("/space")]) == 1
    assert _local_counts(local) == (0, 0, 0, 0)


def test_retries_end_after_their_attempts_with_the_last_answer(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    busy = Answer(503, {"content-type": "application/json"}, b'{"description":"down"}')
    with FakeSource(rel_server, _failing_first("/space", 100, busy)) as src:
        with pytest.raises(RemoteError, match="HTTP 503: down"):
            mirror(_opts(src.base_url, source_cid, retry_attempts=3), local)
    assert len([r for r in src.seen if _path(r).endswith("/space")]) == 3
    assert _local_counts(local) == (0, 0, 0, 0)


def test_429_waits_for_its_retry_after() -> None:
    limited = Answer(429, {"retry-after": "1"}, b"slow down")
    with FakeSource(None, _failing_first("/x", 1, limited)) as src:
        src.route = _chain(src.route, lambda req: Answer(200, {}, b"ok"))
        with HttpClient(src.base_url, retry=RetryPolicy(wait_initial_s=0.01, wait_jitter_s=0)) as h:
            t0 = time.monotonic()
            answer = h.fetch("GET", "/x", "x", limit=1000)
            waited = time.monotonic() - t0
    assert (answer.status, answer.content) == (200, b"ok")
    assert len(src.seen) == 2
    assert waited >= 1.0


def test_connection_refused_is_retried_until_the_server_is_up() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Up(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"up")

        def log_message(self, *args: Any) -> None:
            pass

    servers: list[ThreadingHTTPServer] = []

    def start_later() -> None:
        time.sleep(0.5)  # the first attempts find nobody listening
        server = ThreadingHTTPServer(("127.0.0.1", port), Up)
        servers.append(server)
        server.serve_forever()

    threading.Thread(target=start_later, daemon=True).start()
    policy = RetryPolicy(attempts=30, wait_initial_s=0.1, wait_max_s=0.2, wait_jitter_s=0)
    try:
        with HttpClient(f"http://127.0.0.1:{port}", retry=policy) as h:
            assert h.fetch("GET", "/", "root", limit=100).content == b"up"
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _chain(
    first: Callable[[Req], Answer | None], then: Callable[[Req], Answer | None]
) -> Callable[[Req], Answer | None]:
    return lambda req: first(req) or then(req)


# ------------------------------------------------------------------ progress, summary


def test_progress_callback_reports_rows_and_the_total(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    seen: list[MirrorProgress] = []
    mirror(_opts(rel_server, source_cid), local, on_progress=seen.append)
    initial = [p for p in seen if p.phase == "initial"]
    assert [p.rows for p in initial] == [15, 30, 40]
    # the total is the remote's numberMatched: the planner's estimate by default, which
    # depends on what else the session's database holds (40 or 42 for these 40 items)
    reported = httpx.get(
        f"{rel_server}/search", params={"collections": source_cid, "limit": 1}
    ).json()["numberMatched"]
    assert {p.total for p in initial} == {reported}
    last = initial[-1]
    assert last.bytes > 0 and last.rate > 0
    # what is left of the estimate at the rate: 0 when it was exact (40), else the 2 rows
    assert last.eta_s == pytest.approx(max(0, reported - last.rows) / last.rate)


def test_cli_prints_one_summary_line(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    env = {**os.environ, "EMBCAT_DATABASE_URL": local.database_url}
    cmd = [sys.executable, "-m", "embcat.cli", "mirror", rel_server, "--collection", source_cid,
           "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    assert re.fullmatch(
        rf"mirror \(bulk\): {N} rows upserted, 0 deleted, {N} checksums verified, [\d.]+ MB in"
        r" [\d.]+ s \(\d+ rows/s; load [\d.]+ s, index [\d.]+ s\); cursor \d+",
        lines[0],
    ), lines[0]


# ------------------------------------------------------------------ resume


class _Killed(BaseException):
    """Stands for a kill right after a page was committed."""


@pytest.mark.parametrize("k", [1, 2])
def test_interrupted_after_k_pages_then_rerun_holds_exactly_the_source(
    rel_server: str, source_cid: str, local: DatabaseSettings, database_url: str, k: int
) -> None:
    def stop_after_k(result: MirrorResult) -> None:
        if result.pages == k:
            raise _Killed

    opts = _opts(rel_server, source_cid, page_rows=10)
    with pytest.raises(_Killed):
        mirror(opts, local, on_page=stop_after_k)
    assert _local_counts(local)[1] == 10 * k
    again = mirror(_opts(rel_server, source_cid, page_rows=10), local)
    assert again.upserted == N - 10 * k
    assert _items(local.database_url, source_cid) == _items(database_url, source_cid)
    with psycopg.connect(local.database_url) as c:
        assert c.execute("select phase, rows_total from mirror_state").fetchone() == (
            "incremental",
            N,
        )


# ------------------------------------------------------------------ remote publish


def test_remote_publish_retries_a_503_on_a_chunk_and_on_the_commit(
    rel_server: str, make_key: Callable[..., str], database_url: str, tmp_path: Path
) -> None:
    from embcat.catalog.remote_publish import remote_publish

    cid = f"rp-{uuid.uuid4().hex[:8]}"
    run = write_run(tmp_path / "run", 60, dims=16, seed=9, encoder="rp-" + cid)
    busy = Answer(503, {"content-type": "application/json", "retry-after": "0"},
                  b'{"description":"busy"}')  # fmt: skip
    failed: set[str] = set()

    def flaky(req: Req) -> Answer | None:
        kind = "shard" if "/shards/" in req.path else "commit" if req.path.count("/commit") else ""
        if kind and kind not in failed:
            failed.add(kind)
            return busy
        return None

    fast = RetryPolicy(wait_initial_s=0.01, wait_max_s=0.05, wait_jitter_s=0)
    try:
        with FakeSource(rel_server, flaky) as src:
            res = remote_publish(run, src.base_url, key=make_key("write"), collection_id=cid,
                                 retry=fast)  # fmt: skip
        assert failed == {"shard", "commit"}
        assert res["inserted"] == 60
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


def test_remote_publish_does_not_retry_a_401(rel_server: str, tmp_path: Path) -> None:
    from embcat.catalog.errors import Unauthorized
    from embcat.catalog.remote_publish import remote_publish

    run = write_run(tmp_path / "run", 10, dims=16, seed=9)
    with FakeSource(rel_server) as src:
        with pytest.raises(Unauthorized, match="HTTP 401"):
            remote_publish(run, src.base_url, key="nope.nope")
    assert len([r for r in src.seen if r.path.count("/manifest")]) == 1
