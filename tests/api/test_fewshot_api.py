"""Few-shot search on planted classes through the live API and the SQL surface (issue 14,
D2): every method with 1, 2 and 3 negatives, and the SQL prototype of docs/sql.md."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from vectorgen import item_ids, load_collection, planted_classes

PER_CLASS, DIMS, CLASSES, TOP = 60, 32, 5, 20
IDS = item_ids(PER_CLASS * CLASSES)


@pytest.fixture(scope="module")
def planted(database_url: str) -> Iterator[tuple[str, np.ndarray]]:
    cid = f"fewapi-{uuid.uuid4().hex[:8]}"
    vectors, labels = planted_classes(PER_CLASS, DIMS, classes=CLASSES, seed=8)
    with psycopg.connect(database_url) as c:
        register_vector(c)
        load_collection(c, cid, vectors, encoder_name=f"fewapi-{cid}")
        c.commit()
    yield cid, labels
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (cid,))


def _examples(labels: np.ndarray, a: int, negatives: int, seed: int) -> tuple[list, list]:
    """Two positives of class ``a``; one negative of each of the ``negatives`` classes
    nearest to it on the shared axis (the next one up first)."""
    rng = np.random.default_rng(seed)
    pos = rng.choice(np.flatnonzero(labels == a), 2, replace=False).tolist()
    near = sorted((c for c in range(CLASSES) if c != a), key=lambda c: (abs(c - a), -c))
    neg = [int(rng.choice(np.flatnonzero(labels == c))) for c in near[:negatives]]
    return pos, neg


def _purity(labels: np.ndarray, a: int, found: list[str]) -> float:
    return float(np.mean([labels[IDS.index(i)] == a for i in found]))


@pytest.mark.parametrize("negatives", [1, 2, 3])
@pytest.mark.parametrize("method", ["prototype", "linear"])
def test_few_shot_through_the_api_ranks_the_positives_class(
    live_server: str, planted: tuple[str, np.ndarray], method: str, negatives: int
) -> None:
    cid, labels = planted
    scores = []
    for a in range(CLASSES):
        pos, neg = _examples(labels, a, negatives, seed=a)
        body = {
            "collections": [cid],
            "limit": TOP,
            "similarity": {
                "positive": [{"collection": cid, "id": IDS[j]} for j in pos],
                "negative": [{"collection": cid, "id": IDS[j]} for j in neg],
                "method": method,
            },
        }
        r = httpx.post(live_server + "/search", json=body, timeout=30)
        assert r.status_code == 200, r.text
        found = [f["id"] for f in r.json()["features"]]
        assert len(found) == TOP
        scores.append(_purity(labels, a, found))
    assert min(scores) >= 0.8, scores


def test_sql_prototype_of_docs_ranks_the_positives_class(
    conn: psycopg.Connection, planted: tuple[str, np.ndarray]
) -> None:
    """The SQL surface has no few-shot function; docs/sql.md shows the prototype (the
    mean of the positives) through embcat.similar_to_vector."""
    cid, labels = planted
    for a in range(CLASSES):
        pos, _ = _examples(labels, a, 0, seed=a)
        rows = conn.execute(
            "select item_id from embcat.similar_to_vector(%(c)s,"
            " (select avg(embedding) from embcat.item_embeddings"
            "  where collection_id = %(c)s and item_id = any(%(p)s)), %(k)s)",
            {"c": cid, "p": [IDS[j] for j in pos], "k": TOP + 2},
        ).fetchall()
        found = [r[0] for r in rows if r[0] not in {IDS[j] for j in pos}][:TOP]
        assert _purity(labels, a, found) >= 0.9
