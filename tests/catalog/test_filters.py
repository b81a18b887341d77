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


BOX = (10.0, 45.0, 10.5, 45.3)


def _shapes_around(box: tuple[float, float, float, float]) -> list[str]:
    """WKT of shapes in, across, just outside and on the edges of ``box``: rotated chips
    of every size, chips a nanodegree in or out, a copy of the box, points, a line."""
    rng = np.random.default_rng(21)
    x0, y0, x1, y1 = box
    out = []
    for _ in range(400):
        cx, cy = rng.uniform(x0 - 0.1, x1 + 0.1), rng.uniform(y0 - 0.1, y1 + 0.1)
        r, a = rng.uniform(1e-4, 0.05), rng.uniform(0, np.pi / 2)
        ring = [(float(cx + r * np.cos(a + k * np.pi / 2)),
                 float(cy + r * np.sin(a + k * np.pi / 2))) for k in range(4)]  # fmt: skip
        out.append("POLYGON((" + ",".join(f"{x!r} {y!r}" for x, y in [*ring, ring[0]]) + "))")
    for eps in (-1e-9, 0.0, 1e-9):  # a chip ending just before, on and just past each edge
        for lo, hi, yl, yh in (
            (x0 - 0.01, x0 + eps, y0 + 0.1, y0 + 0.11),
            (x1 - eps, x1 + 0.01, y0 + 0.1, y0 + 0.11),
            (x0 + 0.1, x0 + 0.11, y0 - 0.01, y0 + eps),
            (x0 + 0.1, x0 + 0.11, y1 - eps, y1 + 0.01),
        ):
            out.append(
                f"POLYGON(({lo!r} {yl!r},{hi!r} {yl!r},{hi!r} {yh!r},{lo!r} {yh!r},{lo!r} {yl!r}))"
            )
    out.append(f"POLYGON(({x0!r} {y0!r},{x1!r} {y0!r},{x1!r} {y1!r},{x0!r} {y1!r},{x0!r} {y0!r}))")
    out += [
        f"POINT({x0 + 0.2!r} {y0 + 0.1!r})",
        f"POINT({x0!r} {y0!r})",
        f"POINT({x0 - 1e-9!r} {y0!r})",
    ]
    out.append(f"LINESTRING({x0 - 0.2!r} {y0 - 0.2!r},{x1 + 0.2!r} {y1 + 0.2!r})")
    return out


def _passing(conn: psycopg.Connection, wkts: list[str], conditions: sql.Composable) -> set[int]:
    query = sql.SQL(
        "select n from (select n, ST_GeomFromText(wkt, 4326) as geometry"
        " from unnest(%s::text[]) with ordinality u(wkt, n)) e where {}"
    ).format(conditions)
    return {r[0] for r in conn.execute(query, (wkts,)).fetchall()}


def test_a_bbox_on_embedding_rows_passes_exactly_what_st_intersects_passes(
    conn: psycopg.Connection,
) -> None:
    """The rows' bbox test (a box fast path before ST_Intersects) is exact, edges too."""
    wkts = _shapes_around(BOX)
    flt = Filter.from_search(SearchQuery(bbox=list(BOX)))
    rows = flt.for_embeddings()
    assert rows.counted is not None  # the fast form is the one that runs
    fast = _passing(conn, wkts, sql.SQL(" and ").join(rows.conditions))
    plain = _passing(conn, wkts, sql.SQL(" and ").join(rows.for_estimate().conditions))
    assert "ST_Intersects" in sql.SQL(" ").join(rows.for_estimate().conditions).as_string(conn)
    assert 0 < len(plain) < len(wkts)
    assert fast == plain


def test_a_bbox_too_small_to_shrink_keeps_st_intersects(conn: psycopg.Connection) -> None:
    tiny = (10.0, 45.0, 10.0 + 1e-9, 45.0 + 1e-9)
    rows = Filter.from_search(SearchQuery(bbox=list(tiny))).for_embeddings()
    assert rows.counted is None
    wkts = _shapes_around(tiny)
    assert _passing(conn, wkts, sql.SQL(" and ").join(rows.conditions))


def test_a_bbox_is_estimated_as_its_st_intersects(conn: psycopg.Connection, data: Data) -> None:
    """The strategy's row estimate is the planner's for ST_Intersects (the fast form's
    CASE would halve it; an OR of the two tests was estimated at 1 %)."""
    box = [0.0, 0.0, 4.0, 4.0]
    flt = Filter.from_search(SearchQuery(collections=[data.cid], bbox=box))
    spec = SimilaritySpec.model_validate({"item": {"collection": data.cid, "id": data.ids[0]}})
    _, plan = similar_with_plan(conn, spec, flt, K, settings=FORCE_INDEX)
    space = conn.execute("select space_id from collections where id = %s", (data.cid,)).fetchone()
    assert space is not None
    explain = conn.execute(
        "explain (format json) select 1 from embeddings e where e.space_id = %s"
        " and e.collection_id = any(%s::text[])"
        " and ST_Intersects(e.geometry, ST_MakeEnvelope(0, 0, 4, 4, 4326))",
        (space[0], [data.cid]),
    ).fetchone()
    assert explain is not None
    assert plan.estimated_rows == pytest.approx(explain[0][0]["Plan"]["Plan Rows"])


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
