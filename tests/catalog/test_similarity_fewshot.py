"""Few-shot search on planted classes (issue 14, D2): every method, 0 to 3 negatives.

Two positives of a class A and negatives of 1, 2 or 3 other classes (the classes next to
A on the shared axis first: a negative on one side only is where a linear score against
it ranks the classes beyond A first). Each query's top 20 must be mostly A.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from vectorgen import item_ids, load_collection, planted_classes

from embcat.catalog.similarity import SimilaritySpec, similar

PER_CLASS, DIMS, CLASSES, TOP = 80, 32, 5, 20


@pytest.fixture(scope="module", params=["cosine", "l2", "inner_product"])
def planted(request: pytest.FixtureRequest, database_url: str) -> Iterator[tuple[str, np.ndarray]]:
    """The planted classes in a space of each metric (L2 and inner product: float32).

    Inner product ranks larger vectors first by definition: its encoders give unit
    vectors (``normalized``), and so do these."""
    metric = request.param
    cid = f"fewshot-{uuid.uuid4().hex[:8]}"
    vectors, labels = planted_classes(PER_CLASS, DIMS, classes=CLASSES, seed=3)
    if metric == "inner_product":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    with psycopg.connect(database_url) as c:
        register_vector(c)
        load_collection(
            c, cid, vectors, encoder_name=f"fewshot-{cid}", build_index=False, metric=metric,
            storage="halfvec" if metric == "cosine" else "vector",
        )  # fmt: skip
        c.commit()
    yield cid, labels
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (cid,))


def negative_classes(a: int, count: int) -> list[int]:
    """The ``count`` classes nearest to ``a`` on the axis, the next one up first."""
    order = sorted((c for c in range(CLASSES) if c != a), key=lambda c: (abs(c - a), -c))
    return order[:count]


def queries(labels: np.ndarray, negatives: int) -> list[tuple[int, list[int], list[int]]]:
    """(class, positive rows, negative rows) for every class, two draws each (seeded)."""
    rng = np.random.default_rng(100 + negatives)
    out = []
    for a in range(CLASSES):
        for _ in range(2):
            pos = rng.choice(np.flatnonzero(labels == a), 2, replace=False).tolist()
            neg = [
                int(rng.choice(np.flatnonzero(labels == c))) for c in negative_classes(a, negatives)
            ]
            out.append((a, pos, neg))
    return out


def clause(cid: str, pos: list[int], neg: list[int], method: str) -> dict[str, Any]:
    ids = item_ids(PER_CLASS * CLASSES)
    return {
        "positive": [{"collection": cid, "id": ids[j]} for j in pos],
        "negative": [{"collection": cid, "id": ids[j]} for j in neg],
        "method": method,
    }


def purity(labels: np.ndarray, a: int, found: list[str]) -> float:
    index = {item_id: j for j, item_id in enumerate(item_ids(PER_CLASS * CLASSES))}
    return float(np.mean([labels[index[i]] == a for i in found]))


@pytest.mark.parametrize("negatives", [0, 1, 2, 3])
@pytest.mark.parametrize("method", ["prototype", "linear"])
def test_few_shot_ranks_the_positives_class_first(
    conn: psycopg.Connection, planted: tuple[str, np.ndarray], method: str, negatives: int
) -> None:
    cid, labels = planted
    scores = []
    for a, pos, neg in queries(labels, negatives):
        spec = SimilaritySpec.model_validate(clause(cid, pos, neg, method))
        hits = similar(conn, spec, None, TOP)
        assert len(hits) == TOP
        scores.append(purity(labels, a, [h.item_id for h in hits]))
    assert min(scores) >= 0.8, scores
    assert np.mean(scores) >= 0.95, scores


def test_background_of_a_small_space_in_a_large_table_is_full(conn: psycopg.Connection) -> None:
    """The block sample is sized from the whole table; a space that is a small share of it
    got only a few dozen of its rows as the linear method's background."""
    from embcat.catalog.similarity import SimilaritySettings, background_sample

    rng = np.random.default_rng(5)
    load_collection(
        conn, "bg-large", rng.standard_normal((20_000, 4)), encoder_name="bg-large",
        build_index=False, with_assets=False,
    )  # fmt: skip
    small = load_collection(
        conn, "bg-small", rng.standard_normal((400, 8)), encoder_name="bg-small",
        build_index=False, with_assets=False,
    )  # fmt: skip
    conn.execute("analyze embeddings")
    size = SimilaritySettings().background_sample
    sample = background_sample(conn, small, size)
    assert sample.shape == (size, 8)
    assert len({tuple(v) for v in sample}) == size
