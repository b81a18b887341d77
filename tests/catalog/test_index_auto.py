"""The "auto" index kind is judged on the data, and a grown IVFFlat index is rebuilt.

A space registered with the default kind (``EMBCAT_HNSW_KIND=auto``, 256+ dimensions)
starts as ivfflat-bit; the first build of enough rows measures, on a sample, whether
binary codes rank its vectors (catalog.index_advice) and indexes isotropic-like data as
hnsw-halfvec instead: binary codes there lose most neighbours silently (0.38 recall@10 at
200k). A publish that grows an ivfflat-bit space past 4x the rows of its build rebuilds
it (lists and centre are the build's).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from shardgen import write_run
from vectorgen import load_collection, manifold_vectors

from embcat.catalog import index_advice
from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.stats import collection_stats
from embcat.catalog.store import space_index, spaces

DIMS = 256


def _space(conn: psycopg.Connection, cid: str) -> spaces.Space:
    space = spaces.collection_space(conn, cid)
    assert space is not None
    return space


def _manifold_run(directory: Path, n: int, seed: int, prefix: str, encoder: str) -> Path:
    """A run of ``n`` chips whose vectors are encoder-like (the manifold data set)."""
    vectors = manifold_vectors(n, DIMS, seed=seed)
    shards = 2
    per = -(-n // shards)

    def mutate(rank: int, columns: dict[str, Any]) -> None:
        columns["embedding"] = vectors[rank * per : rank * per + len(columns["id"])]

    return write_run(
        directory, n, DIMS, seed, shards=shards, encoder=encoder, id_prefix=prefix, mutate=mutate
    )


def test_a_new_space_of_isotropic_vectors_is_indexed_as_halfvec_hnsw(
    tmp_path: Path, db_settings: DatabaseSettings, conn: psycopg.Connection
) -> None:
    cid = f"auto-iso-{uuid.uuid4().hex[:6]}"
    # shardgen's vectors are standard normal: sign bits say nothing about neighbours
    run = write_run(tmp_path / "run", 2500, DIMS, 1, encoder=cid)
    result = publish(run, collection_id=cid, settings=db_settings, progress=False)
    space = _space(conn, cid)
    assert (result.index_kind, space.index_kind) == ("hnsw-halfvec", "hnsw-halfvec")
    assert space_index.has_index(conn, space)
    auto = (space.index_params or {})["auto"]
    assert auto["decided"] and auto["binary_recall_at_10"] < index_advice.BINARY_RECALL_FLOOR


def test_a_new_space_of_encoder_like_vectors_keeps_binary_codes(
    tmp_path: Path, db_settings: DatabaseSettings, conn: psycopg.Connection
) -> None:
    cid = f"auto-man-{uuid.uuid4().hex[:6]}"
    run = _manifold_run(tmp_path / "run", 2500, 3, "chip", cid)
    result = publish(run, collection_id=cid, settings=db_settings, progress=False)
    space = _space(conn, cid)
    assert (result.index_kind, space.index_kind) == ("ivfflat-bit", "ivfflat-bit")
    auto = (space.index_params or {})["auto"]
    assert auto["decided"] and auto["binary_recall_at_10"] >= index_advice.BINARY_RECALL_FLOOR


def test_a_small_first_publish_leaves_the_kind_to_the_publish_that_brings_enough_rows(
    tmp_path: Path, db_settings: DatabaseSettings, conn: psycopg.Connection
) -> None:
    cid = f"auto-late-{uuid.uuid4().hex[:6]}"
    publish(write_run(tmp_path / "a", 300, DIMS, 1, encoder=cid), collection_id=cid,
            settings=db_settings, progress=False)  # fmt: skip
    small = _space(conn, cid)
    assert small.index_kind == "ivfflat-bit"
    assert (small.index_params or {})["auto"] == {"decided": False}
    more = write_run(tmp_path / "b", 2500, DIMS, 2, encoder=cid, id_prefix="more")
    result = publish(more, collection_id=cid, settings=db_settings, progress=False)
    conn.commit()  # (a fresh snapshot: the fixture's connection read the space before)
    space = _space(conn, cid)
    assert result.index_built and space.index_kind == "hnsw-halfvec"
    assert space_index.has_index(conn, space)
    names = [r[0] for r in conn.execute(
        "select indexname from pg_indexes where indexname like %s",
        (f"embeddings_%_space_{space.id}%",),
    )]  # fmt: skip
    assert names == [space.index_name]  # the ivfflat-bit index went after the commit


def test_an_explicit_kind_is_never_judged(conn: psycopg.Connection) -> None:
    isotropic = np.random.default_rng(4).standard_normal((2500, DIMS)).astype(np.float32)
    cid = f"auto-explicit-{uuid.uuid4().hex[:6]}"
    space = load_collection(
        conn, cid, isotropic, encoder_name=cid, index_kind="ivfflat-bit", build_index=False
    )
    assert space_index.ensure_index(conn, space)
    assert _space(conn, cid).index_kind == "ivfflat-bit"
    assert "auto" not in (_space(conn, cid).index_params or {})


def test_a_publish_that_grows_an_ivfflat_space_fourfold_rebuilds_its_lists(
    tmp_path: Path, db_settings: DatabaseSettings, conn: psycopg.Connection
) -> None:
    cid = f"auto-grow-{uuid.uuid4().hex[:6]}"
    first = _manifold_run(tmp_path / "a", 2100, 5, "chip", cid)
    publish(first, collection_id=cid, settings=db_settings, progress=False)
    before = _space(conn, cid).index_params or {}
    conn.commit()
    grown = _manifold_run(tmp_path / "b", 7000, 6, "more", cid)
    result = publish(grown, collection_id=cid, settings=db_settings, progress=False)
    after = _space(conn, cid).index_params or {}
    assert result.index_built
    assert after["lists"] > before["lists"] and after["rows"] >= 9000
    assert after["auto"]["decided"]  # the judgement is kept across the rebuild
    # a publish that does not outgrow it leaves it alone
    conn.commit()
    small = _manifold_run(tmp_path / "c", 200, 7, "few", cid)
    assert not publish(small, collection_id=cid, settings=db_settings, progress=False).index_built


def test_stats_advises_binary_codes_for_encoder_like_data_far_larger_than_its_sample(
    conn: psycopg.Connection,
) -> None:
    # 20k items, a 1,000 sample: the advice must not scale the candidates to the sample's
    # share of the items (15 of 1,000 advised the 17x larger index for this data)
    cid = f"auto-stats-{uuid.uuid4().hex[:6]}"
    load_collection(
        conn, cid, manifold_vectors(20_000, DIMS, seed=9), encoder_name=cid, build_index=False
    )
    stats = collection_stats(conn, cid, sample=1000, queries=50)
    assert stats.index is not None
    assert stats.index.recommended == "ivfflat-bit", stats.index.reason


@pytest.mark.parametrize(("rows", "claimed"), [(100, 100), (10_000, 10_000), (10_000, 10**9)])
def test_the_sample_is_repeatable_and_full(
    conn: psycopg.Connection, rows: int, claimed: int
) -> None:
    # (claimed: the row count the caller believes; a page sample of small rows, or one
    # sized for far more rows, can draw no page at all: then every row is read)
    from embcat.catalog.index_advice import space_sample

    cid = f"auto-sample-{uuid.uuid4().hex[:6]}"
    vectors = np.random.default_rng(2).standard_normal((rows, 8)).astype(np.float32)
    space = load_collection(conn, cid, vectors, encoder_name=cid, build_index=False)
    first = space_sample(conn, space, 50, claimed)
    assert len(first) == 50
    assert np.array_equal(first, space_sample(conn, space, 50, claimed))


def test_a_mirror_rebuilds_the_ivfflat_index_its_changes_outgrew(
    tmp_path: Path, make_database: Callable[..., str]
) -> None:
    from helpers_server import start_server

    from embcat.api.settings import ApiSettings
    from embcat.catalog.mirror import MirrorOptions, mirror

    cid = "auto-mirror"
    origin = DatabaseSettings(database_url=make_database())
    local = DatabaseSettings(database_url=make_database())
    # (below ADVICE_MIN_ROWS: the kind stays ivfflat-bit, still to be judged, on both sides)
    publish(write_run(tmp_path / "a", 300, DIMS, 5, encoder=cid), collection_id=cid,
            settings=origin, progress=False)  # fmt: skip
    handle = start_server(ApiSettings(database_url=origin.database_url, db_pool_max=4))
    try:
        mirror(MirrorOptions(handle.base_url, cid), local)
        with psycopg.connect(local.database_url) as c:
            first = _space(c, cid).index_params or {}
        more = write_run(tmp_path / "b", 1000, DIMS, 6, encoder=cid, id_prefix="more")
        publish(more, collection_id=cid, settings=origin, progress=False)
        second = mirror(MirrorOptions(handle.base_url, cid), local)
    finally:
        handle.stop()
    assert second.upserted == 1000
    with psycopg.connect(local.database_url) as c:
        space = _space(c, cid)
        assert space.index_kind == "ivfflat-bit"
        assert (space.index_params or {})["lists"] > first["lists"]
        assert space_index.has_index(c, space)


def test_index_build_kind_auto_switches_an_explicit_binary_space_of_isotropic_data(
    database_url: str,
) -> None:
    from click.testing import CliRunner

    from embcat.cli import main

    cid = f"auto-cli-{uuid.uuid4().hex[:6]}"
    isotropic = np.random.default_rng(6).standard_normal((2500, DIMS)).astype(np.float32)
    with psycopg.connect(database_url) as c:
        register_vector(c)
        load_collection(c, cid, isotropic, encoder_name=cid, index_kind="ivfflat-bit")
        c.commit()
    env = {"EMBCAT_DATABASE_URL": database_url}
    done = CliRunner().invoke(main, ["index", "build", cid, "--kind", "auto"], env=env)
    assert done.exit_code == 0, done.output
    assert f"built the hnsw-halfvec index of {cid}" in done.output
    again = CliRunner().invoke(main, ["index", "build", cid, "--kind", "auto"], env=env)
    assert "already exists" in again.output  # judged the same: nothing to build
    with psycopg.connect(database_url) as c:
        space = _space(c, cid)
        assert space.index_kind == "hnsw-halfvec" and space_index.has_index(c, space)
