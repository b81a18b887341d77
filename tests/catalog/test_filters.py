"""The filter object (catalog.filters): parsed once, rendered for items or embedding rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql
from vectorgen import EPOCH, clustered_vectors, grid_points, item_ids, load_collection

from embcat.catalog.errors import InvalidInput
from embcat.catalog.filters import Filter
from embcat.catalog.search import SearchQuery
from embcat.catalog.similarity import SimilaritySettings, SimilaritySpec, similar_with_plan

N, DIMS, K = 1200, 16, 10
FORCE_INDEX = SimilaritySettings(exact_threshold=0, exact_fraction=0)


@dataclass
class Data:
    cid: str
    vectors: np.ndarray
    points: np.ndarray
    ids: list[str]


@pytest.fixture(scope="module")
def data(database_url: str) -> Iterator[Data]:
    cid = f"flt-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(N, DIMS, clusters=8, seed=11)
    points = grid_points(N, seed=12)
    with psycopg.connect(database_url) as c:
        register_vector(c)
        load_collection(c, cid, vectors, points, encoder_name=f"flttest-{cid}")
        c.commit()
    yield Data(cid, vectors.astype(np.float16).astype(np.float64), points, item_ids(N))


def _ids_where(conn: psycopg.Connection, where: sql.Composable) -> set[str]:
    query = sql.SQL("select i.id from items i where {}").format(where)
    return {r[0] for r in conn.execute(query).fetchall()}


def test_a_bad_bbox_is_refused_when_the_filter_is_built() -> None:
    with pytest.raises(InvalidInput, match="4 or 6 numbers"):
        Filter.from_search(SearchQuery(bbox=[0.0, 1.0, 2.0]))


def test_properties_stay_in_the_remainder_that_joins_items() -> None:
    flt = Filter.from_search(
        SearchQuery(collections=["a"], bbox=[0, 0, 1, 1], filter="platform = 'x'")
    )
    rows = flt.for_embeddings()
    assert len(rows.conditions) == 2  # collection and area on the rows themselves
    assert rows.rest is not None


def test_collections_and_area_need_no_join() -> None:
    rows = Filter.from_search(SearchQuery(collections=["a"], bbox=[0, 0, 1, 1])).for_embeddings()
    assert rows.rest is None


def test_for_items_selects_what_the_embedding_rendering_selects(
    conn: psycopg.Connection, data: Data
) -> None:
    search = SearchQuery(
        collections=[data.cid],
        bbox=[2.0, 2.0, 6.0, 6.0],
        datetime=f"{(EPOCH + timedelta(hours=100)).isoformat()}/"
        f"{(EPOCH + timedelta(hours=700)).isoformat()}",
    )
    flt = Filter.from_search(search)
    rows = flt.for_embeddings()
    on_rows = sql.SQL(
        "select e.item_id from embeddings e join items i on i.collection_id = e.collection_id"
        " and i.id = e.item_id where {}"
    ).format(sql.SQL(" and ").join([*rows.conditions, *([rows.rest] if rows.rest else [])]))
    expected = _ids_where(conn, flt.for_items())
    assert expected  # the window and the box select something
    assert {r[0] for r in conn.execute(on_rows).fetchall()} == expected


def test_similarity_under_a_datetime_window_ranks_like_an_exact_scan(
    conn: psycopg.Connection, data: Data
) -> None:
    lo, hi = 200, 500  # a quarter of the items, by datetime (one hour apart)
    window = "/".join((EPOCH + timedelta(hours=h)).isoformat() for h in (lo, hi))
    flt = Filter.from_search(SearchQuery(collections=[data.cid], datetime=window))
    unit = data.vectors / np.linalg.norm(data.vectors, axis=1, keepdims=True)
    found = 0
    rows = range(0, N, 97)
    for row in rows:
        ref = {"collection": data.cid, "id": data.ids[row]}
        spec = SimilaritySpec.model_validate({"item": ref})
        hits, _ = similar_with_plan(conn, spec, flt, K, settings=FORCE_INDEX)
        mask = np.zeros(N, dtype=bool)
        mask[lo : hi + 1] = True
        mask[row] = False
        dist = np.where(mask, 1 - unit @ unit[row], np.inf)
        want = {data.ids[j] for j in np.argsort(dist, kind="stable")[:K]}
        assert all(lo <= int(h.item_id.split("-")[-1]) <= hi for h in hits)
        found += len(want & {h.item_id for h in hits})
    assert found / (K * len(rows)) >= 0.9
