"""embcat stats: bytes per dtype, compression vs source bytes, recall@10 per dtype."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb
from vectorgen import clustered_vectors, load_collection

from catalog.errors import NotFound
from catalog.stats import collection_stats


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
