"""What a binary-kind index build asks of the server at scale: the IVFFlat k-means memory
(the first 10M publish failed after its 20-minute load with pgvector's "memory required is
1972 MB, maintenance_work_mem is 272 MB") and the centre of a large space (a full scan of
10M rows took minutes; a page sample gives the same signs)."""

from __future__ import annotations

import math
import uuid

import numpy as np
import psycopg
import pytest
from vectorgen import load_collection, manifold_vectors

from embcat.catalog.store import space_index

ROWS, DIMS, LISTS = 20_000, 64, 300


def _codes(conn: psycopg.Connection) -> None:
    rng = np.random.default_rng(3)
    bits = ["".join("1" if b else "0" for b in row) for row in rng.random((ROWS, DIMS)) < 0.5]
    conn.execute(f"create temp table codes (id int, b bit({DIMS}))")
    with conn.cursor().copy("copy codes (id, b) from stdin") as copy:
        for i, b in enumerate(bits):
            copy.write_row((i, b))


def _build(conn: psycopg.Connection, megabytes: int) -> None:
    conn.execute(f"set local maintenance_work_mem = '{megabytes}MB'")
    conn.execute(f"create index on codes using ivfflat (b bit_hamming_ops) with (lists = {LISTS})")


def test_ivfflat_build_memory_is_what_pgvector_asks_for(database_url: str) -> None:
    need = space_index.ivfflat_memory_bytes(ROWS, LISTS, DIMS) / 2**20
    with psycopg.connect(database_url) as conn:
        _codes(conn)
        with conn.transaction():
            _build(conn, math.ceil(need))  # enough
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="memory required"):
            with conn.transaction():
                _build(conn, int(need / 1.5))  # and not a wild overestimate


def test_ivfflat_lists_stop_where_the_build_memory_would_pass_its_cap() -> None:
    assert space_index.ivfflat_lists(1_000_000) == 1000
    assert space_index.ivfflat_lists(10_000_000) == 3162
    assert space_index.ivfflat_lists(100_000_000) == space_index.LISTS_CAP
    capped = space_index.ivfflat_memory_bytes(100_000_000, space_index.LISTS_CAP, 768)
    assert capped < 4096 << 20  # ensure_index's cap on maintenance_work_mem


def test_a_large_spaces_centre_is_the_mean_of_a_repeatable_sample(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = manifold_vectors(3000, 128, seed=4)
    v = v - v.min(axis=0) + 0.01  # all positive: the centre is far from zero
    space = load_collection(
        conn, f"centre-{uuid.uuid4().hex[:6]}", v, encoder_name=f"centre-{uuid.uuid4().hex[:6]}",
        build_index=False,
    )  # fmt: skip
    full = np.asarray(space_index.space_center(conn, space, 3000))  # below the threshold
    monkeypatch.setattr(space_index, "CENTER_SAMPLE_ROWS", 600)
    sampled = np.asarray(space_index.space_center(conn, space, 3000))
    assert not np.allclose(sampled, full, rtol=0, atol=1e-7)  # a sample, not the full scan
    np.testing.assert_array_equal(sampled, space_index.space_center(conn, space, 3000))
    stored = v.astype(np.float16).astype(np.float64)
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    np.testing.assert_allclose(full, unit.mean(axis=0), rtol=2e-3, atol=2e-3)
    # the codes taken against either centre agree on almost every bit
    agree = np.mean(np.sign(unit - sampled) == np.sign(unit - full))
    assert agree > 0.98
    conn.rollback()


def test_ivfflat_probes_keep_a_share_of_the_lists() -> None:
    from embcat.catalog.similarity_rank import ivfflat_probes
    from embcat.catalog.similarity_settings import SimilaritySettings
    from embcat.catalog.store.spaces import Space

    def space(lists: int | None) -> Space:
        params = {"lists": lists} if lists is not None else None
        return Space(1, "e", "1", 768, index_kind="ivfflat-bit", index_params=params)

    s = SimilaritySettings()
    assert ivfflat_probes(s, space(1000)) == 10  # 1M rows: the setting
    assert ivfflat_probes(s, space(3162)) == 16  # 10M rows: 0.5 % of the lists
    assert ivfflat_probes(s, space(None)) == 10  # never built (or built before the record)
    assert ivfflat_probes(SimilaritySettings(ivfflat_probes_fraction=0), space(3162)) == 10
