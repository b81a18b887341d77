"""``embcat mirror`` against hostile or broken sources (issue 15, findings 5, 12, 13, 14, 21).

The source is the real API over the session's database, behind a fake HTTP server
(fakesource.py) that rewrites, redirects, truncates or stretches what the real one answers.
The local catalogue is a fresh database per test; "nothing written" means no collection,
no item, no embedding and no mirror_state row there.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from fakesource import Answer, FakeSource, Req
from shardgen import write_run

from embcat.catalog.mirror import MirrorOptions, RemoteError, mirror
from embcat.catalog.settings import DatabaseSettings

N = 40
DIMS = 16
SECRET = "embcat-test-SECRET-key"


@pytest.fixture(scope="module")
def source_cid(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A collection of N published items (16 dims) in the session's database."""
    from embcat.catalog.publish import publish

    cid = f"mirh-{uuid.uuid4().hex[:8]}"
    run = write_run(tmp_path_factory.mktemp("mirh") / "run", N, dims=DIMS, seed=5)
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


def _local_counts(settings: DatabaseSettings) -> tuple[int, int, int, int]:
    with psycopg.connect(settings.database_url) as c:
        return tuple(  # type: ignore[return-value]
            c.execute(f"select count(*) from {t}").fetchone()[0]
            for t in ("collections", "items", "embeddings", "mirror_state")
        )


def _opts(base: str, cid: str, **kw: object) -> MirrorOptions:
    values: dict[str, object] = {"page_rows": 15}
    values.update(kw)
    return MirrorOptions(base, cid, **values)  # type: ignore[arg-type]


def _path(req: Req) -> str:
    return urlsplit(req.path).path


# ------------------------------------------------------------------ 5: credentials


def test_api_key_goes_to_the_origin_only_not_to_asset_hosts(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    """A plain STAC source whose vector hrefs name another host (and one that redirects
    there): that host serves the vectors but never sees the key."""
    with FakeSource(rel_server) as other:

        def plain(req: Req) -> Answer | None:
            path = _path(req)
            if path == "/exchange":
                return Answer(404, {"content-type": "application/json"}, b'{"code":"NotFound"}')
            if path.startswith("/redirect/"):  # on the origin: off to the other host
                return Answer(302, {"location": other.base_url + path[len("/redirect") :]})
            if path == "/search" or path.endswith("/items"):
                answer = origin.forward(req)
                assert isinstance(answer.body, bytes)
                body = answer.body.replace(
                    f"{origin.base_url}/collections/{source_cid}/items/chip-0000000".encode(),
                    f"{other.base_url}/collections/{source_cid}/items/chip-0000000".encode(),
                ).replace(
                    f"{origin.base_url}/collections/{source_cid}/items/chip-0000001".encode(),
                    f"{origin.base_url}/redirect/collections/{source_cid}/items/chip-0000001".encode(),
                )
                return Answer(answer.status, answer.headers, body)
            return None

        with FakeSource(rel_server, plain) as origin:
            result = mirror(
                _opts(origin.base_url, source_cid, headers={"Authorization": f"Bearer {SECRET}"}),
                local,
            )
    assert (result.mode, result.upserted) == ("items", N)
    fetched = [r for r in other.seen if r.path.endswith("/embedding")]
    assert len(fetched) == 20  # chip-0..9 directly, chip-10..19 through the redirect
    assert not [r for r in other.seen if "authorization" in {k.lower() for k in r.headers}]
    assert any(r.headers.get("Authorization") == f"Bearer {SECRET}" for r in origin.seen)


# ------------------------------------------------------------------ 12: dimensions


def test_space_that_disagrees_with_the_export_is_refused_before_writing(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    """/space says 8 dimensions, the export carries 16: refused, nothing written locally."""

    def lying(req: Req) -> Answer | None:
        if _path(req).endswith("/space"):
            answer = src.forward(req)
            assert isinstance(answer.body, bytes)
            return Answer(
                200, answer.headers, answer.body.replace(b'"dimensions":16', b'"dimensions":8')
            )
        return None

    with FakeSource(rel_server, lying) as src:
        with pytest.raises(RemoteError, match="8 dimensions but its vectors carry \\[16\\]"):
            mirror(_opts(src.base_url, source_cid), local)
    assert _local_counts(local) == (0, 0, 0, 0)


# ------------------------------------------------------------------ 13: bounds


def test_endless_export_body_is_cut_at_the_page_bound(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    def endless(req: Req) -> Answer | None:
        if _path(req).endswith("/export"):
            return Answer(200, {"content-type": "application/vnd.apache.parquet"},
                          itertools.repeat(b"\0" * 65536))  # fmt: skip
        return None

    with FakeSource(rel_server, endless) as src:
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match="exceeds the 2,097,152 bytes"):
            mirror(_opts(src.base_url, source_cid, max_page_bytes=2 << 20), local)
        assert time.monotonic() - t0 < 30
    assert _local_counts(local) == (0, 0, 0, 0)


def test_slow_body_ends_at_the_request_deadline(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    def trickle() -> Iterator[bytes]:
        while True:
            yield b"P"
            time.sleep(0.3)

    def slow(req: Req) -> Answer | None:
        if _path(req).endswith("/export"):
            return Answer(200, {"content-type": "application/vnd.apache.parquet"}, trickle())
        return None

    with FakeSource(rel_server, slow) as src:
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match="took more than 2 s"):
            mirror(_opts(src.base_url, source_cid, request_deadline_s=2.0, timeout_s=5), local)
        assert time.monotonic() - t0 < 10
    assert _local_counts(local) == (0, 0, 0, 0)


def test_change_feed_that_never_ends_stops_at_the_page_bound(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    def endless_feed(req: Req) -> Answer | None:
        if _path(req).endswith("/changes"):
            since = int(httpx.URL(req.path).params.get("since", "0"))
            page = json.dumps(
                {
                    "changes": [{"op": "delete", "id": "nope", "change_seq": since + 1}],
                    "next": since + 1,
                    "more": True,
                }
            )
            return Answer(200, {"content-type": "application/json"}, page.encode())
        return None

    with FakeSource(rel_server, endless_feed) as src:
        with pytest.raises(RemoteError, match="did not end within 5 pages"):
            mirror(_opts(src.base_url, source_cid, max_pages=5), local)
    # the initial pages (3) were committed; the feed stopped after 5 pages
    assert _local_counts(local)[1] == N


def _plain(route: Callable[[Req], Answer | None]) -> Callable[[Req], Answer | None]:
    """A plain STAC API (no /exchange: the mirror takes the item fallback) + ``route``."""

    def plain(req: Req) -> Answer | None:
        if _path(req) == "/exchange":
            return Answer(404, {"content-type": "application/json"}, b'{"code":"NotFound"}')
        return route(req)

    return plain


def test_endless_fallback_item_page_is_cut_at_the_json_bound(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    def endless(req: Req) -> Answer | None:
        if _path(req) == "/search":
            body = itertools.chain([b'{"type":"FeatureCollection","features":['],
                                   itertools.repeat(b" " * 65536))  # fmt: skip
            return Answer(200, {"content-type": "application/geo+json"}, body)
        return None

    with FakeSource(rel_server, _plain(endless)) as src:
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match="item search .* exceeds the 1,048,576 bytes"):
            mirror(_opts(src.base_url, source_cid, max_json_bytes=1 << 20), local)
        assert time.monotonic() - t0 < 30
    assert _local_counts(local) == (0, 0, 0, 0)


def test_slow_fallback_item_page_ends_at_the_request_deadline_with_one_cli_line(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    def trickle() -> Iterator[bytes]:
        yield b'{"type":"FeatureCollection","features":['
        while True:
            time.sleep(0.3)
            yield b" "

    def slow(req: Req) -> Answer | None:
        if _path(req) == "/search":
            return Answer(200, {"content-type": "application/geo+json"}, trickle())
        return None

    env = {**os.environ, "EMBCAT_DATABASE_URL": local.database_url,
           "EMBCAT_MIRROR_REQUEST_DEADLINE_S": "2"}  # fmt: skip
    cmd = [sys.executable, "-m", "embcat.cli", "mirror", "", "--collection", source_cid, "--quiet"]
    with FakeSource(rel_server, _plain(slow)) as src:
        cmd[4] = src.base_url
        t0 = time.monotonic()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert time.monotonic() - t0 < 30
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(lines) == 1 and "item search" in lines[0] and "took more than 2 s" in lines[0]
    assert _local_counts(local) == (0, 0, 0, 0)


def test_fallback_item_pages_that_never_end_stop_at_the_page_bound(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    """Every page links a next page (the same one, for ever): stopped at max_pages; the
    pages before stay committed, nothing is deleted (the pass did not complete)."""

    def looping(req: Req) -> Answer | None:
        if _path(req) == "/search":
            answer = src.forward(req)
            assert isinstance(answer.body, bytes)
            page = json.loads(answer.body)
            page["links"] = [{"rel": "next", "href": src.base_url + req.path}]
            return Answer(200, {"content-type": "application/geo+json"}, json.dumps(page).encode())
        return None

    with FakeSource(rel_server, _plain(looping)) as src:
        with pytest.raises(RemoteError, match="item search did not end within 4 pages"):
            mirror(_opts(src.base_url, source_cid, max_pages=4), local)
    assert _local_counts(local)[:3] == (1, 15, 15)


# ------------------------------------------------------------------ 14: index on rerun


class _Killed(BaseException):
    """Stands for a SIGKILL right after a page was committed."""


def test_mirror_killed_after_its_last_page_builds_the_index_on_rerun(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    from embcat.catalog.mirror import local_space
    from embcat.catalog.store.space_index import has_index

    def kill_after_last_page(result: object) -> None:
        if getattr(result, "upserted", 0) == N:
            raise _Killed

    with pytest.raises(_Killed):
        mirror(_opts(rel_server, source_cid), local, on_page=kill_after_last_page)
    with psycopg.connect(local.database_url) as c:
        assert c.execute("select phase from mirror_state").fetchone() == ("incremental",)
        assert not has_index(c, local_space(c, source_cid))
    again = mirror(_opts(rel_server, source_cid), local)
    assert again.upserted == 0
    with psycopg.connect(local.database_url) as c:
        assert has_index(c, local_space(c, source_cid))


# ------------------------------------------------------------------ 21: CLI errors


def _cli_mirror(base: str, cid: str, local: DatabaseSettings) -> subprocess.CompletedProcess:
    env = {**os.environ, "EMBCAT_DATABASE_URL": local.database_url}
    cmd = [sys.executable, "-m", "embcat.cli", "mirror", base, "--collection", cid, "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_truncated_export_is_a_one_line_cli_error_and_leaves_nothing(
    rel_server: str, source_cid: str, local: DatabaseSettings, tmp_path: Path
) -> None:
    def truncated(req: Req) -> Answer | None:
        if _path(req).endswith("/export"):
            answer = src.forward(req)
            assert isinstance(answer.body, bytes)
            return Answer(200, answer.headers, iter([answer.body[: len(answer.body) // 2]]))
        return None

    with FakeSource(rel_server, truncated) as src:
        done = _cli_mirror(src.base_url, source_cid, local)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a complete embcat export" in lines[0], done.stderr
    assert _local_counts(local) == (0, 0, 0, 0)


def test_redirect_to_another_host_is_a_one_line_cli_error_and_leaves_nothing(
    rel_server: str, source_cid: str, local: DatabaseSettings
) -> None:
    with FakeSource(rel_server) as other:

        def redirect(req: Req) -> Answer | None:
            if _path(req).endswith("/export"):
                return Answer(307, {"location": other.base_url + req.path})
            return None

        with FakeSource(rel_server, redirect) as src:
            done = _cli_mirror(src.base_url, source_cid, local)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "redirects (HTTP 307)" in lines[0], done.stderr
    assert not [r for r in other.seen if r.path.endswith("/export")]
    assert _local_counts(local) == (0, 0, 0, 0)
