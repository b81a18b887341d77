"""embcat stats: bytes per dtype, compression vs source bytes, recall@10 per dtype."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb
from vectorgen import clustered_vectors, load_collection

from embcat.catalog.errors import NotFound
from embcat.catalog.stats import collection_stats


@pytest.fixture
def loaded(conn: psycopg.Connection) -> psycopg.Connection:
    vectors = clustered_vectors(400, 32, clusters=8, seed=4)
    load_collection(conn, "stats", vectors, encoder_name="stats-test", build_index=False)
    conn.execute(
        "update collections set stac = stac || %s where id = 'stats'",
        (Jsonb({"embcat:source_bytes": 400 * 64 * 64 * 3 * 2}),),
    )
    return conn


def test_bytes_and_compression_per_dtype(loaded: psycopg.Connection) -> None:
    stats = collection_stats(loaded, "stats", sample=400, queries=20)
    by = {d.dtype: d for d in stats.dtypes}
    assert [by[d].bytes_per_embedding for d in ("float32", "float16", "int8", "binary")] == [
        128,
        64,
        32,
        4,
    ]
    assert by["float32"].compression_vs_source == pytest.approx(64 * 64 * 3 * 2 / 128, rel=0.01)


def test_recall_orders_the_dtypes(loaded: psycopg.Connection) -> None:
    stats = collection_stats(loaded, "stats", sample=400, queries=30)
    r = {d.dtype: d.recall_at_10 for d in stats.dtypes}
    assert r["float32"] == 1.0
    assert r["float16"] >= r["int8"] - 0.02 >= 0.8
    assert r["binary"] < r["float16"]
    assert np.isfinite(list(r.values())).all()


def test_unknown_collection(conn: psycopg.Connection) -> None:
    with pytest.raises(NotFound):
        collection_stats(conn, "nope")


# -- D14 (issue 14): source bytes count each chip once ------------------------------------


def _stats_source_bytes(db_settings, cid: str) -> int | None:
    from embcat.catalog.db import connect

    with connect(db_settings) as c:
        return collection_stats(c, cid, sample=20, queries=2).source_bytes


def test_noop_republish_of_a_rewritten_manifest_counts_the_source_once(tmp_path, db_settings):
    """Re-running encode (every shard reused) rewrites the manifest: another checksum for
    the same chips. Publishing it again inserts nothing and must add no source bytes."""
    from datetime import timedelta

    from shardgen import write_run

    from embcat.catalog.publish import publish
    from embcat.encoders.manifest import Manifest

    run = write_run(tmp_path / "run", 40, dims=8, seed=2, encoder="d14-" + tmp_path.name[-8:])
    cid = "d14-" + tmp_path.name[-8:]
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    manifest = Manifest.load(run)
    manifest.created += timedelta(hours=1)
    manifest.dump(run)
    res = publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert (res.inserted, res.updated) == (0, 0)
    assert _stats_source_bytes(db_settings, cid) == manifest.source_bytes


def test_upsert_of_new_vectors_for_the_same_chips_adds_no_source(tmp_path, db_settings):
    from shardgen import write_run

    from embcat.catalog.publish import publish
    from embcat.encoders.manifest import Manifest

    enc = "d14u-" + tmp_path.name[-8:]
    first = write_run(tmp_path / "a", 40, dims=8, seed=2, encoder=enc)
    again = write_run(tmp_path / "b", 40, dims=8, seed=3, encoder=enc)  # same chips
    cid = enc
    publish(first, collection_id=cid, settings=db_settings, progress=False)
    res = publish(again, collection_id=cid, mode="upsert", settings=db_settings, progress=False)
    assert res.updated == 40
    assert _stats_source_bytes(db_settings, cid) == Manifest.load(first).source_bytes


def test_a_run_of_new_chips_adds_its_source_bytes(tmp_path, db_settings):
    from shardgen import write_run

    from embcat.catalog.publish import publish
    from embcat.encoders.manifest import Manifest

    enc = "d14n-" + tmp_path.name[-8:]
    first = write_run(tmp_path / "a", 40, dims=8, seed=2, encoder=enc)
    more = write_run(tmp_path / "b", 20, dims=8, seed=3, encoder=enc, id_prefix="more")
    publish(first, collection_id=enc, settings=db_settings, progress=False)
    publish(more, collection_id=enc, settings=db_settings, progress=False)
    expected = Manifest.load(first).source_bytes + Manifest.load(more).source_bytes
    assert _stats_source_bytes(db_settings, enc) == expected


def _advice(conn: psycopg.Connection, cid: str, vectors: np.ndarray):
    load_collection(conn, cid, vectors, encoder_name=f"advice-{cid}", build_index=False)
    stats = collection_stats(conn, cid, sample=len(vectors), queries=40)
    assert stats.index is not None
    return stats.index


def test_index_advice_recommends_binary_codes_for_manifold_data(conn: psycopg.Connection) -> None:
    from vectorgen import manifold_vectors

    advice = _advice(conn, "advice-manifold", manifold_vectors(3000, 256, seed=3))
    assert advice.binary_recall_at_10 >= 0.95
    assert advice.recommended == "ivfflat-bit"


def test_index_advice_recommends_halfvec_hnsw_for_isotropic_data(conn: psycopg.Connection) -> None:
    isotropic = np.random.default_rng(5).standard_normal((3000, 256)).astype(np.float32)
    advice = _advice(conn, "advice-isotropic", isotropic)
    assert advice.binary_recall_at_10 < 0.95
    assert advice.recommended == "hnsw-halfvec"
    assert "halfvec" in advice.reason
