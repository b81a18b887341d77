"""SQL surface (migrations 0003, 0008): functions match brute force, with or without an area;
the reader role is read-only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from vectorgen import clustered_vectors, grid_points, item_ids, load_collection, plant_neighbours

N, DIMS, K = 1500, 24, 10
QUERIES = list(range(0, 1500, 150))
POINTS = grid_points(N)  # what load_collection places the items at by default


@pytest.fixture(scope="module")
def coll(database_url: str) -> Iterator[tuple[str, np.ndarray]]:
    cid = f"sqlsurf-{uuid.uuid4().hex[:8]}"
    vectors = plant_neighbours(clustered_vectors(N, DIMS, clusters=10, seed=21), QUERIES, K)
    with psycopg.connect(database_url) as c:
        register_vector(c)
        load_collection(c, cid, vectors, encoder_name=f"sqlsurf-{cid}")
        c.commit()
        # Cluster-wide and harmless: lets the test user SET ROLE to the reader.
        c.execute("grant embcat_reader to current_user")
        c.commit()
    stored = vectors.astype(np.float16).astype(np.float64)
    yield cid, stored / np.linalg.norm(stored, axis=1, keepdims=True)


@pytest.fixture
def reader(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute("set local role embcat_reader")
    return conn


def test_similar_function_recalls_the_true_neighbours(reader, coll) -> None:
    cid, unit = coll
    ids = item_ids(N)
    found = 0
    for q in QUERIES:
        rows = reader.execute("select item_id from embcat.similar(%s, %s, %s)", (cid, ids[q], K))
        dist = 1 - unit @ unit[q]
        dist[q] = np.inf
        truth = {ids[j] for j in np.argsort(dist)[:K]}
        found += len(truth & {r[0] for r in rows})
    assert found / (K * len(QUERIES)) >= 0.95


def test_similar_to_vector_ranks_by_cosine_distance(reader, coll) -> None:
    cid, unit = coll
    rows = reader.execute(
        "select item_id, distance from embcat.similar_to_vector(%s, %s::vector, 5)",
        (cid, str(unit[QUERIES[1]].tolist())),
    ).fetchall()
    assert rows[0][0] == item_ids(N)[QUERIES[1]]
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    assert rows[0][1] == pytest.approx(0, abs=1e-3)


def test_view_serves_the_stored_vector(reader, coll) -> None:
    cid, unit = coll
    row = reader.execute(
        "select embedding, dimensions from embcat.item_embeddings"
        " where collection_id = %s and item_id = %s",
        (cid, item_ids(N)[7]),
    ).fetchone()
    assert row[1] == DIMS
    v = np.asarray(row[0].to_list() if hasattr(row[0], "to_list") else row[0], dtype=np.float64)
    assert v / np.linalg.norm(v) == pytest.approx(unit[7], abs=1e-6)


@pytest.mark.parametrize(
    "statement",
    [
        "insert into collections (id, stac) values ('x', '{}')",
        "update items set properties = '{}'",
        "delete from embeddings",
        "create table embcat.t (a int)",
        "select * from api_keys",
    ],
)
def test_reader_role_cannot_write_or_read_keys(reader, coll, statement) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        reader.execute(statement)


def test_wrong_dimension_is_a_clear_error(reader, coll) -> None:
    cid, _ = coll
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"has 3 values.*has {DIMS}"):
        reader.execute("select * from embcat.similar_to_vector(%s, '[1,2,3]', 5)", (cid,))


def test_unknown_item_is_a_clear_error(reader, coll) -> None:
    cid, _ = coll
    with pytest.raises(psycopg.errors.NoDataFound, match="not found"):
        reader.execute("select * from embcat.similar(%s, 'nope', 5)", (cid,))


def test_function_settings_do_not_leak_into_the_session(reader, coll) -> None:
    cid, _ = coll
    reader.execute("select * from embcat.similar(%s, %s, 50)", (cid, item_ids(N)[0])).fetchall()
    row = reader.execute("select current_setting('hnsw.ef_search')").fetchone()
    assert row == ("40",)


def _within_truth(unit: np.ndarray, q: int, box: tuple[float, ...], k: int) -> list[str]:
    dist = 1 - unit @ unit[q]
    dist[q] = np.inf
    x, y = POINTS[:, 0], POINTS[:, 1]
    dist[~((x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3]))] = np.inf
    return [item_ids(N)[j] for j in np.argsort(dist, kind="stable")[:k] if np.isfinite(dist[j])]


@pytest.mark.parametrize(
    "box", [(0, 0, 2, 2), (0, 0, 8, 9)], ids=["exact-below-the-bound", "index-above-it"]
)
def test_similar_within_an_area_keeps_only_items_in_it(reader, coll, box) -> None:
    """~60 filtered rows are searched exactly (the same ranking as brute force); ~1,080 of
    1,500 go through the index (2,000 rows is the bound: it runs only when the table holds
    more, so the test lowers nothing and checks recall over the area on both paths)."""
    cid, unit = coll
    found = total = 0
    for q in QUERIES:
        rows = reader.execute(
            "select item_id from embcat.similar(%s, %s, %s, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
            (cid, item_ids(N)[q], K, *box),
        ).fetchall()
        truth = _within_truth(unit, q, box, K)
        got = [r[0] for r in rows]
        assert set(got) <= {item_ids(N)[j] for j in range(N) if _inside(j, box)}
        found += len(set(truth) & set(got))
        total += len(truth)
    assert found / total >= 0.95


def _inside(j: int, box: tuple[float, ...]) -> bool:
    x, y = POINTS[j]
    return bool(box[0] <= x <= box[2] and box[1] <= y <= box[3])


def test_area_in_another_crs_is_a_clear_error(reader, coll) -> None:
    cid, _ = coll
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="EPSG:4326"):
        reader.execute(
            "select * from embcat.similar(%s, %s, 5, ST_MakeEnvelope(0, 0, 1, 1, 3857))",
            (cid, item_ids(N)[0]),
        )


# -- D13: the SQL surface validates like the API ----------------------------------------


@pytest.mark.parametrize("k", [0, -1, 1001, 5000])
def test_similar_refuses_k_outside_1_to_1000(reader, coll, k) -> None:
    cid, _ = coll
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="k must be between 1 and 1000"):
        reader.execute("select * from embcat.similar(%s, %s, %s)", (cid, item_ids(N)[0], k))


@pytest.mark.parametrize("k", [0, -1, 1001, 5000])
def test_similar_to_vector_refuses_k_outside_1_to_1000(reader, coll, k) -> None:
    cid, unit = coll
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="k must be between 1 and 1000"):
        reader.execute(
            "select * from embcat.similar_to_vector(%s, %s::vector, %s)",
            (cid, str(unit[0].tolist()), k),
        )


def test_similar_with_the_largest_k_returns_k_rows(reader, coll) -> None:
    cid, _ = coll
    rows = reader.execute(
        "select item_id from embcat.similar(%s, %s, 1000)", (cid, item_ids(N)[0])
    ).fetchall()
    assert len(rows) == 1000
    assert item_ids(N)[0] not in {r[0] for r in rows}


@pytest.mark.parametrize("function", ["similar", "similar_to_vector"])
def test_unknown_collection_is_named_as_such(reader, coll, function) -> None:
    arg = "'x'" if function == "similar" else f"'{[0.5] * DIMS}'::vector"
    with pytest.raises(psycopg.errors.NoDataFound, match="collection nope does not exist"):
        reader.execute(f"select * from embcat.{function}('nope', {arg}, 5)")


def test_collection_without_embeddings_is_named_by_similar(conn) -> None:
    conn.execute("insert into collections (id, stac) values ('sql-empty', '{}')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="sql-empty has no embeddings"):
        conn.execute("select * from embcat.similar('sql-empty', 'x', 5)")
