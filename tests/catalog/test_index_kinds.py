"""Index kinds per space (migration 0014): each kind serves every filter at the recall of
the exact answer's neighbours, the binary kinds are centred, switching swaps without
leaving readers without an index, and the SQL functions use the space's kind."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql
from vectorgen import EPOCH, grid_points, item_ids, load_collection, manifold_vectors

from embcat.catalog.similarity import SimilaritySettings, SimilaritySpec, similar_with_plan
from embcat.catalog.store import space_index, spaces

N, DIMS, K = 3000, 256, 10
QUERIES = list(range(0, N, 150))  # 20 item queries
FORCE_INDEX = SimilaritySettings(exact_threshold=0, exact_fraction=0)
KINDS = ["hnsw-halfvec", "ivfflat-bit", "hnsw-bit"]
BOX = (0.0, 0.0, 5.0, 10.0)  # the western half of the grid (grid_points: 0..10)


@dataclass
class Data:
    cid: str
    space: spaces.Space
    unit: np.ndarray  # stored vectors, unit length
    stored: np.ndarray
    points: np.ndarray
    ids: list[str]


def _load(url: str, kind: str, vectors: np.ndarray) -> Data:
    cid = f"kind-{kind}-{uuid.uuid4().hex[:6]}"
    points = grid_points(N, seed=5)
    with psycopg.connect(url) as c:
        register_vector(c)
        space = load_collection(
            c, cid, vectors, points, encoder_name=f"kinds-{cid}", index_kind=kind
        )
        c.commit()
    stored = vectors.astype(np.float16).astype(np.float64)
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    return Data(cid, space, unit, stored, points, item_ids(N))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    # all positive (as ReLU features): uncentred sign bits would all be 1
    v = manifold_vectors(N, DIMS, seed=11)
    return (v - v.min(axis=0) + 0.01).astype(np.float32)


@pytest.fixture(scope="module", params=KINDS)
def data(request, database_url: str, vectors: np.ndarray) -> Iterator[Data]:
    yield _load(database_url, request.param, vectors)


def truth(d: Data, row: int, mask: np.ndarray | None = None) -> set[str]:
    dist = 1 - d.unit @ d.unit[row]
    dist[row] = np.inf
    if mask is not None:
        dist[~mask] = np.inf
    return {d.ids[j] for j in np.argsort(dist, kind="stable")[:K]}


def recall(conn, d: Data, mask=None, settings=FORCE_INDEX, **kw) -> tuple[float, set[str]]:
    found, strategies = 0, set()
    extra = kw.pop("spec", {})
    for row in QUERIES:
        spec = SimilaritySpec.model_validate(
            {"item": {"collection": d.cid, "id": d.ids[row]}, **extra}
        )
        hits, plan = similar_with_plan(conn, spec, limit=K, settings=settings, **kw)
        assert len(hits) == K
        strategies.add(plan.strategy)
        found += len({h.item_id for h in hits} & truth(d, row, mask))
    return found / (K * len(QUERIES)), strategies


def west(d: Data) -> np.ndarray:
    return d.points[:, 0] <= BOX[2]


def test_binary_kinds_record_the_mean_unit_vector_as_centre(data: Data) -> None:
    if not data.space.binary:
        assert data.space.center is None
        return
    assert data.space.center is not None
    np.testing.assert_allclose(
        np.asarray(data.space.center), data.unit.mean(axis=0), rtol=2e-3, atol=2e-3
    )


def test_each_kind_recalls_the_neighbours_unfiltered(conn, data: Data) -> None:
    r, strategies = recall(conn, data, where=None)
    assert strategies == {"index"}
    assert r >= 0.9


def test_each_kind_recalls_the_neighbours_within_a_bbox(conn, data: Data) -> None:
    area = sql.SQL("st_makeenvelope({}, {}, {}, {}, 4326)").format(*map(sql.Literal, BOX))
    r, strategies = recall(conn, data, west(data), where=None, area=area)
    assert strategies == {"index"}
    assert r >= 0.9


def test_each_kind_recalls_the_neighbours_within_a_datetime_window(conn, data: Data) -> None:
    # load_collection dates the items one hour apart: the first half of them
    end = EPOCH + timedelta(hours=N // 2 - 1)
    where = sql.SQL("i.datetime <= {}").format(sql.Literal(end))
    mask = np.arange(N) <= N // 2 - 1
    r, strategies = recall(conn, data, mask, where=where)
    assert strategies == {"index"}
    assert r >= 0.9


def test_ivfflat_probing_every_list_recalls_at_least_the_default(conn, data: Data) -> None:
    if data.space.index_kind != "ivfflat-bit":
        return
    default, _ = recall(conn, data, where=None)
    every = SimilaritySettings(exact_threshold=0, exact_fraction=0, ivfflat_probes_fraction=1)
    full, strategies = recall(conn, data, settings=every, where=None)
    assert strategies == {"index"}
    # the global top candidates by Hamming distance need not hold more true neighbours than
    # the probed lists' (k-means samples at random): allow one neighbour of the 200
    assert full >= default - 0.005 and full >= 0.95


def test_each_kind_answers_exactly_with_the_escape_hatch(conn, data: Data) -> None:
    r, strategies = recall(conn, data, where=None, spec={"exact": True})
    assert strategies == {"exact"}
    assert r == 1.0


def test_each_kind_goes_exact_for_a_selective_filter(conn, data: Data) -> None:
    # 2 % of the rows, below the default exact_fraction rule with a 5,000-row threshold
    box = (0.0, 0.0, 0.2, 10.0)
    area = sql.SQL("st_makeenvelope({}, {}, {}, {}, 4326)").format(*map(sql.Literal, box))
    mask = data.points[:, 0] <= box[2]
    row = int(np.flatnonzero(mask)[0])
    spec = SimilaritySpec.model_validate({"item": {"collection": data.cid, "id": data.ids[row]}})
    hits, plan = similar_with_plan(
        conn, spec, limit=K, where=None, area=area,
        settings=SimilaritySettings(exact_threshold=5000),
    )  # fmt: skip
    assert plan.strategy == "exact"
    assert len({h.item_id for h in hits} & truth(data, row, mask)) >= 9  # float16 near-ties


def _no_other_plan(c: psycopg.Connection) -> None:
    # At 3,000 rows a sequential scan and sort is cheaper than any index: forbid it, so
    # that an index scan shows the query's expression matches the index's.
    c.execute("set enable_seqscan = off")
    c.execute("set enable_sort = off")


def _index_scans(url: str, name: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(
            "select coalesce(sum(idx_scan), 0) from pg_stat_user_indexes where indexrelname = %s",
            (name,),
        ).fetchone()
        return int(row[0]) if row else 0


def _wait_for_scans(url: str, name: str, before: int) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = _index_scans(url, name)
        if now > before:
            return now
        time.sleep(0.2)
    return before


def test_the_api_query_scans_the_index_of_the_spaces_kind(database_url: str, data: Data) -> None:
    before = _index_scans(database_url, data.space.index_name)
    with psycopg.connect(database_url, autocommit=True) as c:
        register_vector(c)
        c.execute("select pg_stat_force_next_flush()")
        _no_other_plan(c)
        spec = SimilaritySpec.model_validate(
            {"item": {"collection": data.cid, "id": data.ids[QUERIES[3]]}}
        )
        similar_with_plan(c, spec, limit=K, where=None, settings=FORCE_INDEX)
    assert _wait_for_scans(database_url, data.space.index_name, before) > before


def test_the_sql_function_scans_the_index_of_the_spaces_kind(database_url: str, data: Data) -> None:
    before = _index_scans(database_url, data.space.index_name)
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("select pg_stat_force_next_flush()")
        _no_other_plan(c)
        rows = c.execute(
            "select item_id from embcat.similar(%s, %s, %s)", (data.cid, data.ids[QUERIES[5]], K)
        ).fetchall()
    assert len({r[0] for r in rows} & truth(data, QUERIES[5])) >= 8
    assert _wait_for_scans(database_url, data.space.index_name, before) > before


def test_the_sql_function_recalls_the_neighbours_within_an_area(conn, data: Data) -> None:
    found = 0
    for row in QUERIES:
        rows = conn.execute(
            "select item_id from embcat.similar(%s, %s, %s, st_makeenvelope(%s, %s, %s, %s, 4326))",
            (data.cid, data.ids[row], K, *BOX),
        ).fetchall()
        found += len({r[0] for r in rows} & truth(data, row, west(data)))
    assert found / (K * len(QUERIES)) >= 0.9


def test_switching_the_kind_swaps_the_index_without_leaving_readers(
    database_url: str, vectors: np.ndarray
) -> None:
    d = _load(database_url, "hnsw-halfvec", vectors)
    spec = SimilaritySpec.model_validate({"item": {"collection": d.cid, "id": d.ids[0]}})
    with (
        psycopg.connect(database_url) as writer,
        psycopg.connect(database_url, autocommit=True) as reader,
    ):
        register_vector(writer)
        register_vector(reader)
        writer.execute("set lock_timeout = '5s'")
        assert space_index.ensure_index(writer, d.space, kind="ivfflat-bit", drop_old=False)
        # before the commit, a reader still finds the old kind and its index, unblocked
        reader.execute("set lock_timeout = '2s'")
        hits, plan = similar_with_plan(reader, spec, limit=K, where=None, settings=FORCE_INDEX)
        assert plan.space.index_kind == "hnsw-halfvec" and plan.strategy == "index"
        writer.commit()
        # after the commit, readers use the new kind while the old index is still there
        hits_new, plan = similar_with_plan(reader, spec, limit=K, where=None, settings=FORCE_INDEX)
        assert plan.space.index_kind == "ivfflat-bit" and plan.strategy == "index"
        writer.autocommit = True
        assert space_index.finish_swap(writer, d.space.id) == [
            spaces.index_name(d.space.id, "hnsw-halfvec")
        ]
        names = space_index._index_names(writer, d.space.id)
        after, strategies = recall(reader, d, where=None)
    assert names == [spaces.index_name(d.space.id, "ivfflat-bit")]
    assert strategies == {"index"} and after >= 0.9


def test_rebuilding_the_same_kind_recentres_under_the_same_name(
    database_url: str, vectors: np.ndarray
) -> None:
    d = _load(database_url, "ivfflat-bit", vectors)
    with psycopg.connect(database_url) as c:
        register_vector(c)
        c.execute(
            "update embeddings set embedding = embedding + %s::halfvec where collection_id = %s",
            (str([0.5] * DIMS), d.cid),
        )
        assert space_index.ensure_index(c, d.space, rebuild=True)
        c.commit()
        space = spaces.get_space(c, d.space.id)
        names = space_index._index_names(c, d.space.id)
    assert space.center is not None
    shifted = d.stored + 0.5
    expected = (shifted / np.linalg.norm(shifted, axis=1, keepdims=True)).mean(axis=0)
    assert not np.allclose(np.asarray(d.space.center), expected, atol=3e-3)
    np.testing.assert_allclose(np.asarray(space.center), expected, rtol=3e-3, atol=3e-3)
    assert names == [space.index_name]


def test_an_unknown_kind_is_refused(conn) -> None:
    from embcat.catalog.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unknown index kind"):
        spaces.get_or_create_space(
            conn,
            encoder_name="k",
            encoder_version="1",
            dimensions=8,
            index_kind="lsh",  # type: ignore[arg-type]
        )


def test_new_spaces_get_a_binary_kind_from_256_dimensions(conn) -> None:
    small = spaces.get_or_create_space(conn, encoder_name="k8", encoder_version="1", dimensions=8)
    wide = spaces.get_or_create_space(
        conn, encoder_name="k768", encoder_version="1", dimensions=768
    )
    assert (small.index_kind, wide.index_kind) == ("hnsw-halfvec", "ivfflat-bit")


def test_every_kind_searches_exactly_below_sqrt_candidates_times_n(conn, data: Data) -> None:
    # 10 % of 3,000 rows: above exact_fraction 0.001 (3 rows), below sqrt(300 x 3,000) = 949
    # (migration 0027: HNSW over halfvec too, whose graph ranked such filters far worse)
    box = (0.0, 0.0, 1.0, 10.0)
    area = sql.SQL("st_makeenvelope({}, {}, {}, {}, 4326)").format(*map(sql.Literal, box))
    mask = data.points[:, 0] <= box[2]
    row = int(np.flatnonzero(mask)[0])
    spec = SimilaritySpec.model_validate({"item": {"collection": data.cid, "id": data.ids[row]}})
    settings = SimilaritySettings(exact_threshold=0, exact_fraction=0.001)
    hits, plan = similar_with_plan(conn, spec, None, K, area=area, settings=settings)
    assert plan.strategy == "exact"
    assert len({h.item_id for h in hits} & truth(data, row, mask)) >= 9  # float16 near-ties


def test_every_kind_takes_its_index_above_sqrt_candidates_times_n(conn, data: Data) -> None:
    # ~half of 3,000 rows: above sqrt(300 x 3,000) = 949
    box = (0.0, 0.0, 5.0, 10.0)
    area = sql.SQL("st_makeenvelope({}, {}, {}, {}, 4326)").format(*map(sql.Literal, box))
    mask = data.points[:, 0] <= box[2]
    assert mask.sum() > 949
    row = int(np.flatnonzero(mask)[0])
    spec = SimilaritySpec.model_validate({"item": {"collection": data.cid, "id": data.ids[row]}})
    settings = SimilaritySettings(exact_threshold=0, exact_fraction=0.001)
    hits, plan = similar_with_plan(conn, spec, None, K, area=area, settings=settings)
    assert plan.strategy == "index" and len(hits) == K  # (its recall: the tests above)
