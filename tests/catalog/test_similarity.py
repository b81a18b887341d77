"""Similarity search on the real database: recall against numpy brute force, strategy, errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql
from vectorgen import (
    clustered_vectors,
    grid_points,
    item_ids,
    load_collection,
    plant_neighbours,
)

from embcat.catalog.errors import InvalidInput, NotFound
from embcat.catalog.similarity import (
    SimilaritySettings,
    SimilaritySpec,
    background_sample,
    linear_query,
    parse_spec,
    similar,
    similar_with_plan,
)
from embcat.catalog.store.spaces import collection_space

N, DIMS, K = 3000, 32, 10
QUERY_ROWS = list(range(0, 2400, 120))  # 20 queries, each followed by 10 planted neighbours
FORCE_INDEX = SimilaritySettings(exact_threshold=0, exact_fraction=0)


@dataclass
class Data:
    cid: str
    vectors: np.ndarray  # as stored (float16-rounded), float64
    points: np.ndarray
    ids: list[str]


@pytest.fixture(scope="module")
def data(database_url: str) -> Iterator[Data]:
    cid = f"sim-{uuid.uuid4().hex[:8]}"
    vectors = plant_neighbours(clustered_vectors(N, DIMS, clusters=20, seed=3), QUERY_ROWS, K)
    points = grid_points(N, seed=4)
    with psycopg.connect(database_url) as c:
        register_vector(c)
        load_collection(c, cid, vectors, points, encoder_name=f"simtest-{cid}")
        c.commit()
    stored = vectors.astype(np.float16).astype(np.float64)
    yield Data(cid, stored, points, item_ids(N))


def bbox_where(box: tuple[float, float, float, float]) -> sql.Composable:
    return sql.SQL("i.geometry && st_makeenvelope({}, {}, {}, {}, 4326)").format(
        *(sql.Literal(v) for v in box)
    )


def truth(
    d: Data, row: int, box: tuple[float, float, float, float] | None, k: int = K
) -> list[str]:
    unit = d.vectors / np.linalg.norm(d.vectors, axis=1, keepdims=True)
    dist = 1 - unit @ unit[row]
    mask = np.ones(len(dist), dtype=bool)
    mask[row] = False
    if box is not None:
        x, y = d.points[:, 0], d.points[:, 1]
        mask &= (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
    order = np.argsort(np.where(mask, dist, np.inf), kind="stable")[: min(k, int(mask.sum()))]
    return [d.ids[j] for j in order]


def item_spec(d: Data, row: int, **kw: object) -> SimilaritySpec:
    return SimilaritySpec.model_validate({"item": {"collection": d.cid, "id": d.ids[row]}, **kw})


def bbox_area(box: tuple[float, float, float, float]) -> sql.Composable:
    return sql.SQL("st_makeenvelope({}, {}, {}, {}, 4326)").format(*(sql.Literal(v) for v in box))


def box_filter(box, form: str) -> dict[str, sql.Composable | None]:
    """A bbox as a filter over the items (``where``, joined) or as the ``area`` tested on
    the embedding rows' copy of the geometry (what the API sends)."""
    if box is None:
        return {"where": None}
    if form == "area":
        return {"where": None, "area": bbox_area(box)}
    return {"where": bbox_where(box)}


def recall(
    conn: psycopg.Connection, d: Data, box, settings, form: str = "where", **kw: object
) -> float:
    found = 0
    for row in QUERY_ROWS:
        hits, plan = similar_with_plan(
            conn, item_spec(d, row, **kw), limit=K, settings=settings, **box_filter(box, form)
        )
        assert plan.strategy == ("exact" if kw.get("exact") else "index")
        assert len(hits) == K
        found += len({h.item_id for h in hits} & set(truth(d, row, box)))
    return found / (K * len(QUERY_ROWS))


def test_unfiltered_index_search_recalls_planted_neighbours(conn, data) -> None:
    assert recall(conn, data, None, FORCE_INDEX) >= 0.95


@pytest.mark.parametrize("form", ["where", "area"])
@pytest.mark.parametrize("box", [(0, 0, 5, 6), (0, 0, 1.5, 1.5)], ids=["30pct", "2pct"])
def test_filtered_index_search_holds_recall(conn, data, box, form) -> None:
    assert recall(conn, data, box, FORCE_INDEX, form) >= 0.95


@pytest.mark.parametrize(
    ("box", "form"),
    [(None, "where"), ((2, 2, 6, 5), "where"), ((2, 2, 6, 5), "area")],
    ids=["unfiltered", "bbox-items", "bbox-embeddings"],
)
def test_exact_equals_brute_force(conn, data, box, form) -> None:
    for row in QUERY_ROWS[:5]:
        hits = similar(conn, item_spec(data, row, exact=True), limit=K, **box_filter(box, form))
        assert [h.item_id for h in hits] == truth(data, row, box)


def test_spatial_area_ranks_like_the_same_bbox_over_the_items(conn, data) -> None:
    """A bbox given as ``area`` (tested on the embedding rows' copy of the geometry, no
    join) gives the same ranking as the bbox as a filter over the items, either strategy."""
    box = (1, 1, 4, 4)
    strategies = []
    for settings in (FORCE_INDEX, SimilaritySettings(exact_fraction=1.0)):
        hits, plan = similar_with_plan(
            conn, item_spec(data, 7), None, K, settings=settings, area=bbox_area(box)
        )
        joined = similar(conn, item_spec(data, 7), bbox_where(box), K, settings=settings)
        assert [h.item_id for h in hits] == [h.item_id for h in joined]
        strategies.append(plan.strategy)
    assert strategies == ["index", "exact"]


def test_default_settings_pick_exact_for_a_small_collection(conn, data) -> None:
    settings = SimilaritySettings(exact_threshold=5000)
    _, plan = similar_with_plan(conn, item_spec(data, QUERY_ROWS[0]), None, K, settings=settings)
    assert plan.strategy == "exact" and plan.estimated_rows < 5000


def test_filter_below_the_fraction_of_the_space_runs_exact(conn, data) -> None:
    settings = SimilaritySettings(exact_threshold=0, exact_fraction=0.05)
    box = (0, 0, 2, 2)  # ~4 % of the items
    _, plan = similar_with_plan(conn, item_spec(data, 0), bbox_where(box), K, settings=settings)
    assert plan.strategy == "exact"
    _, plan = similar_with_plan(conn, item_spec(data, 0), None, K, settings=settings)
    assert plan.strategy == "index"


def test_very_selective_filter_still_returns_every_match(conn, data) -> None:
    box = (0, 0, 0.6, 0.6)  # ~11 items of 3000
    expected = truth(data, 5, box, k=50)
    hits = similar(conn, item_spec(data, 5), bbox_where(box), 50, settings=FORCE_INDEX)
    assert [h.item_id for h in hits] == expected


def test_filtered_index_search_on_an_autocommit_connection(database_url, data) -> None:
    """The search settings (iterative scan) hold on an autocommit connection too."""
    box = (0, 0, 2, 2)  # ~4 % of the items: a plain index scan would not find 10
    with psycopg.connect(database_url, autocommit=True) as auto:
        hits, plan = similar_with_plan(
            auto, item_spec(data, 0), bbox_where(box), K, settings=FORCE_INDEX
        )
    assert plan.strategy == "index"
    assert [h.item_id for h in hits] == truth(data, 0, box)


def test_row_estimate_follows_the_data_after_it_grows(conn) -> None:
    """Estimates are remembered per filter, but not past a change of the tables."""
    cid = f"grow-{uuid.uuid4().hex[:8]}"
    load_collection(conn, cid, clustered_vectors(400, 8, clusters=4, seed=9), encoder_name=cid)
    conn.execute("analyze items; analyze embeddings")
    spec = SimilaritySpec.model_validate({"item": {"collection": cid, "id": item_ids(400)[1]}})
    _, before = similar_with_plan(conn, spec, None, K)
    for table, key in (("items", "id"), ("embeddings", "item_id")):
        columns = [
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns where table_name = %s"
                " and is_generated = 'NEVER' and column_default is null order by ordinal_position",
                (table,),
            )
        ]
        copied = [f"{c} || '-b'" if c == key else c for c in columns]
        conn.execute(
            sql.SQL(
                "insert into {t} ({cols}) select {vals} from {t} where collection_id = {c}"
            ).format(
                t=sql.Identifier(table),
                cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
                vals=sql.SQL(", ".join(copied)),
                c=sql.Literal(cid),
            )
        )
    conn.execute("analyze items; analyze embeddings")
    _, after = similar_with_plan(conn, spec, None, K)
    assert before.estimated_rows == pytest.approx(400, rel=0.25)
    assert after.estimated_rows == pytest.approx(800, rel=0.25)


def test_float32_l2_space_ranks_by_item_and_by_vector(conn) -> None:
    """Spaces stored as float32 ``vector`` (not halfvec) with the L2 metric."""
    cid = f"f32-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(300, 16, clusters=5, seed=11).astype(np.float32)
    load_collection(conn, cid, vectors, encoder_name=cid, storage="vector", metric="l2")
    ids = item_ids(300)
    dist = np.linalg.norm(vectors.astype(np.float64) - vectors[7], axis=1)
    expected = [ids[j] for j in np.argsort(dist, kind="stable")[1:6]]
    by_item = SimilaritySpec.model_validate({"item": {"collection": cid, "id": ids[7]}})
    by_vector = SimilaritySpec.model_validate(
        {"vector": vectors[7].tolist(), "collection": cid, "exact": True}
    )
    assert [h.item_id for h in similar(conn, by_item, None, 5, settings=FORCE_INDEX)] == expected
    hits = similar(conn, by_vector, None, 6)
    assert [h.item_id for h in hits] == [ids[7], *expected]
    assert hits[1].distance == pytest.approx(dist[ids.index(expected[0])], rel=1e-5)


def test_distance_and_score_are_cosine(conn, data) -> None:
    hits = similar(conn, item_spec(data, QUERY_ROWS[1], exact=True), None, 3)
    q = data.vectors[QUERY_ROWS[1]]
    for h in hits:
        v = data.vectors[data.ids.index(h.item_id)]
        cos = q @ v / np.linalg.norm(q) / np.linalg.norm(v)
        assert h.distance == pytest.approx(1 - cos, abs=1e-4)
        assert h.score == pytest.approx(1 - h.distance)


def test_settings_of_the_callers_transaction_are_put_back(conn, data) -> None:
    conn.execute("select set_config('hnsw.ef_search', '33', true)")
    similar(conn, item_spec(data, QUERY_ROWS[0]), None, K, settings=FORCE_INDEX)
    row = conn.execute("select current_setting('hnsw.ef_search')").fetchone()
    assert row == ("33",)


def test_query_item_is_left_out(conn, data) -> None:
    row = QUERY_ROWS[2]
    hits = similar(conn, item_spec(data, row), None, K)
    assert data.ids[row] not in {h.item_id for h in hits}


def test_pages_continue_the_ranking(conn, data) -> None:
    spec = item_spec(data, QUERY_ROWS[3], exact=True)
    whole = similar(conn, spec, None, 20)
    assert similar(conn, spec, None, 10, offset=10) == whole[10:]


def test_raw_vector_query(conn, data) -> None:
    row = QUERY_ROWS[4]
    spec = SimilaritySpec(vector=data.vectors[row].tolist(), collection=data.cid, exact=True)
    hits = similar(conn, spec, None, K + 1)
    assert [h.item_id for h in hits] == [data.ids[row], *truth(data, row, None)]
    assert hits[0].distance == pytest.approx(0, abs=1e-5)


def test_prototype_of_positives_finds_their_group(conn, data) -> None:
    row = QUERY_ROWS[5]
    group = data.ids[row : row + K + 1]
    spec = SimilaritySpec.model_validate(
        {"positive": [{"collection": data.cid, "id": i} for i in group[:3]]}
    )
    hits = similar(conn, spec, None, len(group) - 3)
    assert {h.item_id for h in hits} == set(group[3:])


def test_linear_ranks_by_the_positives_and_the_classifier_direction(conn, data) -> None:
    row, other = QUERY_ROWS[6], QUERY_ROWS[7]
    unit = data.vectors / np.linalg.norm(data.vectors, axis=1, keepdims=True)
    pos, neg = [row, row + 1, row + 2], [other, other + 1, 3]
    spec = SimilaritySpec.model_validate(
        {
            "positive": [{"collection": data.cid, "id": data.ids[j]} for j in pos],
            "negative": [{"collection": data.cid, "id": data.ids[j]} for j in neg],
            "method": "linear",
            "exact": True,
        }
    )
    hits = similar(conn, spec, None, K)
    space = collection_space(conn, data.cid)
    assert space is not None
    background = background_sample(conn, space, SimilaritySettings().background_sample)
    q = linear_query(data.vectors[pos], data.vectors[neg], background, metric="cosine")
    decision = unit @ (q / np.linalg.norm(q))
    decision[pos + neg] = -np.inf
    expected = [data.ids[j] for j in np.argsort(-decision)[:K]]
    assert [h.item_id for h in hits] == expected


def test_linear_classifier_without_negatives_uses_background(conn, data) -> None:
    row = QUERY_ROWS[8]
    group = data.ids[row : row + K + 1]
    spec = SimilaritySpec.model_validate(
        {"positive": [{"collection": data.cid, "id": i} for i in group[:4]], "method": "linear"}
    )
    hits = similar(conn, spec, None, len(group) - 4)
    assert {h.item_id for h in hits} == set(group[4:])


def test_vector_of_wrong_dimension_is_refused(conn, data) -> None:
    spec = SimilaritySpec(vector=[0.1] * (DIMS + 1), collection=data.cid)
    with pytest.raises(InvalidInput, match=f"has {DIMS + 1} values.*has {DIMS}"):
        similar(conn, spec, None, K)


def test_unknown_item_is_not_found(conn, data) -> None:
    spec = SimilaritySpec.model_validate({"item": {"collection": data.cid, "id": "nope"}})
    with pytest.raises(NotFound, match="nope"):
        similar(conn, spec, None, K)


def test_collection_without_embeddings_is_refused(conn, data) -> None:
    conn.execute("insert into collections (id, stac) values ('bare', '{}'::jsonb)")
    spec = SimilaritySpec(vector=[0.1] * DIMS, collection="bare")
    with pytest.raises(InvalidInput, match="without embeddings.*bare"):
        similar(conn, spec, None, K)


def test_collections_of_different_spaces_are_not_compared(conn, data) -> None:
    other = load_collection(
        conn,
        "other-space",
        clustered_vectors(20, DIMS, seed=9),
        encoder_name="another-encoder",
        build_index=False,
    )
    assert other.id is not None
    spec = item_spec(data, 0)
    with pytest.raises(InvalidInput, match=f"different embedding spaces.*{data.cid}.*other-space"):
        similar(conn, spec, None, K, collections=[data.cid, "other-space"])


@pytest.mark.parametrize(
    "clause, message",
    [
        ({}, "exactly one of"),
        ({"vector": [1.0, float("nan")], "collection": "c"}, "not a finite number"),
        ({"item": {"collection": "c", "id": "i"}, "vector": [1.0]}, "exactly one of"),
        ({"item": {"collection": "c", "id": "i"}, "ef_search": 5000}, "ef_search"),
        ({"negative": [{"collection": "c", "id": "i"}], "vector": [1.0]}, "need 'positive'"),
    ],
)
def test_malformed_clauses_are_refused(clause, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_spec(clause)


def test_page_beyond_max_k_is_refused(conn, data) -> None:
    with pytest.raises(InvalidInput, match="ranked up to 1000"):
        similar(conn, item_spec(data, 0), None, 10, offset=995)


def test_ef_search_outside_the_allowed_range_is_refused(conn, data) -> None:
    with pytest.raises(InvalidInput, match="ef_search must be between 10 and 1000"):
        similar(conn, item_spec(data, 0, ef_search=5), None, K)


def test_each_query_is_recorded_in_the_latency_metric(conn, data) -> None:
    from embcat.catalog import metrics

    def count() -> float:
        return sum(
            s.value
            for m in metrics.SIMILARITY_DURATION.collect()
            for s in m.samples
            if s.name.endswith("_count") and s.labels["strategy"] == "exact"
        )

    before = count()
    settings = SimilaritySettings(exact_threshold=5000)
    similar_with_plan(conn, item_spec(data, QUERY_ROWS[0]), None, K, settings=settings)
    assert count() == before + 1
