"""Two servers on loopback over two databases: publish into A, mirror into B.

Items, vectors and similarity results must be equal after the first run; after changes and
deletions in A only those move; a mirror killed mid-transfer resumes to the same state;
against a plain STAC API (no exchange routes) the item/asset fallback gives the same result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers_server import ServerHandle, start_server
from pgvector.psycopg import register_vector
from shardgen import write_run

from embcat.catalog.mirror import MirrorOptions, mirror
from embcat.catalog.settings import DatabaseSettings

CID = "mir"
N = 120


def _snapshot(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        register_vector(c)
        return c.execute(
            """select i.id, ST_AsText(i.geometry), i.bbox, i.datetime, i.properties, i.assets,
                      i.links, coalesce(e.embedding_f32, e.embedding::vector)::text
                 from items i join embeddings e on e.collection_id = i.collection_id
                                              and e.item_id = i.id
                where i.collection_id = %s order by i.id""",
            (CID,),
        ).fetchall()


def _neighbours(url: str, item: str) -> list[str]:
    from embcat.catalog.similarity import SimilaritySpec, similar

    with psycopg.connect(url) as c:
        register_vector(c)
        spec = SimilaritySpec.model_validate({"item": {"collection": CID, "id": item}})
        return [h.item_id for h in similar(c, spec, None, 10)]


@pytest.fixture
def remote(make_database: Callable[..., str], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database URL, server URL) of catalogue A with N published items."""
    from embcat.api.settings import ApiSettings
    from embcat.catalog.publish import publish

    url = make_database()
    run = write_run(tmp_path / "run", N, dims=16, seed=3)
    publish(run, collection_id=CID, settings=DatabaseSettings(database_url=url), progress=False)
    handle = start_server(ApiSettings(database_url=url, db_pool_max=4))
    try:
        yield url, handle.base_url
    finally:
        handle.stop()


def test_mirror_then_incremental_changes(
    remote: tuple[str, str], make_database: Callable[..., str]
) -> None:
    a_url, a_base = remote
    b_url = make_database()
    b = DatabaseSettings(database_url=b_url)
    first = mirror(MirrorOptions(a_base, CID, page_rows=50), b)
    assert (first.upserted, first.verified, first.pages) == (N, N, 3)
    assert _snapshot(a_url) == _snapshot(b_url)
    assert _neighbours(a_url, "chip-00000007") == _neighbours(b_url, "chip-00000007")

    with psycopg.connect(a_url) as c:
        c.execute(
            'update items set properties = properties || \'{"label": "water"}\''
            " where collection_id = %s and id in ('chip-00000003', 'chip-00000050')",
            (CID,),
        )
        c.execute(
            "update embeddings set embedding = (select embedding from embeddings"
            " where item_id = 'chip-00000001') where item_id = 'chip-00000002'"
        )
        c.execute(
            "update items set assets = jsonb_set(assets, '{embeddings,file:checksum}',"
            " (select assets -> 'embeddings' -> 'file:checksum' from items"
            "  where id = 'chip-00000001')) where id = 'chip-00000002'"
        )
        c.execute("delete from items where id in ('chip-00000010', 'chip-00000011')")
    second = mirror(MirrorOptions(a_base, CID, page_rows=50), b)
    assert (second.upserted, second.deleted) == (3, 2)
    assert _snapshot(a_url) == _snapshot(b_url)
    third = mirror(MirrorOptions(a_base, CID, page_rows=50), b)
    assert (third.upserted, third.deleted, third.bytes) == (0, 0, 0)


def _mirrored_dtype(url: str) -> str:
    with psycopg.connect(url) as c:
        row = c.execute("select dtype from mirror_state where collection_id = %s", (CID,))
        return str(row.fetchone()[0])


def test_a_halfvec_space_is_mirrored_as_float16_by_default(
    remote: tuple[str, str], make_database: Callable[..., str]
) -> None:
    """float16 is lossless for halfvec storage and half the bytes of float32."""
    a_url, a_base = remote
    b_url, c_url = make_database(), make_database()
    half = mirror(MirrorOptions(a_base, CID, page_rows=50), DatabaseSettings(database_url=b_url))
    full = mirror(
        MirrorOptions(a_base, CID, page_rows=50, dtype="float32"),
        DatabaseSettings(database_url=c_url),
    )
    assert (_mirrored_dtype(b_url), half.verified) == ("float16", N)
    assert _snapshot(b_url) == _snapshot(a_url)  # every vector as stored
    assert full.bytes - half.bytes > 0.8 * N * 16 * 2  # 2 B a value fewer (16 dims)


def test_an_existing_mirror_keeps_its_dtype_under_auto(
    remote: tuple[str, str], make_database: Callable[..., str]
) -> None:
    a_url, a_base = remote
    b_url = make_database()
    b = DatabaseSettings(database_url=b_url)
    mirror(MirrorOptions(a_base, CID, page_rows=50, dtype="float32"), b)
    with psycopg.connect(a_url) as c:
        c.execute("delete from items where id = 'chip-00000010'")
    again = mirror(MirrorOptions(a_base, CID, page_rows=50), b)  # auto: no Conflict
    assert (again.deleted, _mirrored_dtype(b_url)) == (1, "float32")


def test_killed_mirror_resumes_to_the_same_state(
    remote: tuple[str, str], make_database: Callable[..., str]
) -> None:
    a_url, a_base = remote
    b_url = make_database()
    env = {**os.environ, "EMBCAT_DATABASE_URL": b_url}
    cmd = [sys.executable, "-m", "embcat.cli", "mirror", a_base, "--collection", CID]
    proc = subprocess.Popen(
        [*cmd, "--page-rows", "4", "--quiet"], env=env, stdout=subprocess.DEVNULL
    )
    killed_at = None
    deadline = time.monotonic() + 60
    with psycopg.connect(b_url, autocommit=True) as c:
        while time.monotonic() < deadline and proc.poll() is None:
            row = c.execute("select phase, rows_total from mirror_state").fetchone()
            if row and row[1] >= 12:
                proc.send_signal(signal.SIGKILL)
                killed_at = row
                break
            time.sleep(0.005)
    proc.wait(timeout=30)
    assert killed_at is not None and killed_at[0] == "initial"
    with psycopg.connect(b_url) as c:
        partial = c.execute("select count(*) from items").fetchone()[0]
    assert 12 <= partial < N
    done = subprocess.run([*cmd, "--quiet"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _snapshot(a_url) == _snapshot(b_url)


def test_fallback_against_a_plain_stac_api(
    remote: tuple[str, str], make_database: Callable[..., str]
) -> None:
    from embcat.api import exchange, exchange_vectors
    from embcat.api.app import FEATURES, create_app
    from embcat.api.settings import ApiSettings

    a_url, _ = remote
    # No exchange routes: items keep their vector assets, nothing else.
    plain_features = [f for f in FEATURES if f is not exchange.build_router]
    app = create_app(
        ApiSettings(database_url=a_url, db_pool_max=4),
        features=[*plain_features, exchange_vectors.build_router],
    )
    plain: ServerHandle = start_server(app=app)
    try:
        b_url = make_database()
        b = DatabaseSettings(database_url=b_url)
        first = mirror(MirrorOptions(plain.base_url, CID, page_rows=50), b)
        assert (first.mode, first.upserted, first.verified) == ("items", N, N)
        assert _snapshot(a_url) == _snapshot(b_url)
        with psycopg.connect(a_url) as c:
            c.execute("delete from items where id = 'chip-00000020'")
        second = mirror(MirrorOptions(plain.base_url, CID, page_rows=50), b)
        assert (second.deleted, second.verified) == (1, 0)
        assert _snapshot(a_url) == _snapshot(b_url)
    finally:
        plain.stop()
