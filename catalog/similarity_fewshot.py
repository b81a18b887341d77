"""The query vector of a similarity clause: a stored item's, a raw vector, or one made
from few-shot examples (prototype / linear; the maths is described in catalog.similarity)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psycopg

from embcat.catalog.errors import InvalidInput, NotFound
from embcat.catalog.similarity_settings import SimilaritySettings
from embcat.catalog.similarity_spec import ItemRef, SimilaritySpec
from embcat.catalog.store import embedding_reads, item_reads
from embcat.catalog.store.partitions import estimated_rows
from embcat.catalog.store.spaces import Space


def _fetch_vectors(conn: psycopg.Connection, space: Space, refs: Sequence[ItemRef]) -> np.ndarray:
    pairs = [(r.collection, r.id) for r in refs]
    found = embedding_reads.vectors_of(conn, space, pairs)
    missing = [p for p in pairs if p not in found]
    if missing:
        known_set = item_reads.existing(conn, missing)
        absent = [f"{c}/{i}" for c, i in missing if (c, i) not in known_set]
        if absent:
            raise NotFound(f"item(s) not found: {', '.join(absent)}")
        raise NotFound("item(s) without an embedding: " + ", ".join(f"{c}/{i}" for c, i in missing))
    return np.stack([found[p] for p in pairs])


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise InvalidInput("an example vector is all zeros; it has no direction")
    return rows / norms


def prototype(
    positives: np.ndarray, negatives: np.ndarray, *, metric: str, negative_weight: float
) -> np.ndarray:
    """``p̄ + γ(p̄ − n̄)`` (unit-length examples in cosine spaces; ``p̄`` without negatives)."""
    if metric == "cosine":
        positives = _unit(positives)
        negatives = _unit(negatives) if len(negatives) else negatives
    p_mean = positives.mean(axis=0)
    if not len(negatives):
        return p_mean
    return p_mean + negative_weight * (p_mean - negatives.mean(axis=0))


def linear_direction(
    positives: np.ndarray,
    negatives: np.ndarray,
    *,
    background: np.ndarray | None = None,
    iterations: int = 300,
    l2: float = 1e-2,
    learning_rate: float = 0.5,
) -> np.ndarray:
    """Weight vector ``w`` of a class-balanced, L2-regularised logistic regression.

    Minimises ``Σ c_i·log(1 + exp(−s·(w·x + b))) + l2/2·|w|²`` (s = ±1) by full-batch
    gradient descent; the bias is not regularised and not returned. The positives weigh
    1/2 in all, the negatives 1/2: split equally between the explicit ``negatives`` and
    the ``background`` sample when both are given (so that a single explicit negative
    still counts, and the classifier still has to tell the positives from everything
    else, not only from that one).
    """
    groups = [g for g in (negatives, background) if g is not None and len(g)]
    if not groups:
        raise InvalidInput("the linear method needs negatives or a background sample")
    x = np.vstack([positives, *groups])
    y = np.concatenate([np.ones(len(positives)), np.zeros(sum(len(g) for g in groups))])
    weight = np.concatenate(
        [np.full(len(positives), 0.5 / len(positives))]
        + [np.full(len(g), 0.5 / len(groups) / len(g)) for g in groups]
    )
    scale = float(np.sqrt((x * x).sum(axis=1).mean())) or 1.0
    xs = x / scale  # keeps the step size meaningful whatever the vectors' magnitude
    w = np.zeros(x.shape[1])
    b = 0.0
    for _ in range(iterations):
        z = np.clip(xs @ w + b, -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        g = weight * (p - y)
        w -= learning_rate * (xs.T @ g + l2 * w)
        b -= learning_rate * float(g.sum())
    return w / scale


def linear_query(
    positives: np.ndarray,
    negatives: np.ndarray,
    background: np.ndarray,
    *,
    metric: str,
    iterations: int = 300,
    l2: float = 1e-2,
) -> np.ndarray:
    """The query vector of the ``linear`` method (examples as stored; see the module doc).

    Cosine spaces: ``p̂ + ŵ``, the unit mean of the (unit) positives plus the unit
    classifier direction, ranked by cosine distance: like the positives (a linear score
    alone grows without bound past them, so that a negative on one side ranked whatever
    lies beyond the positives first) and, of those, away from the negatives. Other
    metrics: ``w``, ranked by inner product.
    """
    if metric == "cosine":
        positives, background = _unit(positives), _unit(background)
        negatives = _unit(negatives) if len(negatives) else negatives
    w = linear_direction(positives, negatives, background=background, iterations=iterations, l2=l2)
    if metric != "cosine":
        return w
    norm = float(np.linalg.norm(w))
    if norm == 0:
        raise InvalidInput("the examples give the classifier no direction to rank by")
    p = positives.mean(axis=0)
    return p / max(float(np.linalg.norm(p)), 1e-12) + w / norm


def background_sample(conn: psycopg.Connection, space: Space, size: int) -> np.ndarray:
    """A fixed pseudo-random sample of ``size`` rows of the space (block sample, then a
    hash order; fewer only if the space holds fewer)."""
    total = estimated_rows(conn, space.id)
    percent = 100.0 if total <= 0 else min(100.0, 100.0 * 20 * size / total)
    rows = embedding_reads.block_sample(conn, space, percent, size)
    if len(rows) < size:
        # The block sample is sized from the whole table: a space that is a small share
        # of it yields too few rows. Then up to 20x the size of the space's own rows
        # (through its index, so bounded whatever the table's size), in hash order.
        more = embedding_reads.first_rows_sample(conn, space, 20 * size, size)
        if len(more) > len(rows):
            rows = more
    return np.asarray([r[0] for r in rows], dtype=np.float64).reshape(-1, space.dimensions)


def query_vector(
    conn: psycopg.Connection,
    spec: SimilaritySpec,
    space: Space,
    settings: SimilaritySettings,
    item_vector: np.ndarray | None = None,
) -> tuple[np.ndarray, str, bool]:
    """The query vector, the pgvector operator to rank with, and whether the index can serve.

    ``item_vector``: the stored vector of ``spec.item`` when already read (else it is read
    here, and a missing item or vector is a NotFound naming which).
    """
    op = space.distance_op
    indexable = space.indexable
    if spec.item is not None:
        if item_vector is not None and len(item_vector) == space.dimensions:
            q = item_vector.astype(np.float64)
        else:
            q = _fetch_vectors(conn, space, [spec.item])[0]
    elif spec.vector is not None:
        if len(spec.vector) != space.dimensions:
            raise InvalidInput(
                f"the vector has {len(spec.vector)} values; the space of the collection"
                f" ({space.encoder_name} {space.encoder_version}) has {space.dimensions}"
            )
        q = np.asarray(spec.vector, dtype=np.float64)
    else:
        assert spec.positive is not None
        if len(spec.positive) + len(spec.negative) > settings.max_examples:
            raise InvalidInput(f"at most {settings.max_examples} examples are allowed")
        pos = _fetch_vectors(conn, space, spec.positive)
        neg = (
            _fetch_vectors(conn, space, spec.negative)
            if spec.negative
            else np.empty((0, space.dimensions))
        )
        if spec.method == "prototype":
            q = prototype(pos, neg, metric=space.metric, negative_weight=settings.negative_weight)
        else:
            background = background_sample(conn, space, settings.background_sample)
            if not len(background):
                raise InvalidInput("the space holds no vectors to contrast the examples with")
            q = linear_query(
                pos, neg, background, metric=space.metric,
                iterations=settings.linear_iterations, l2=settings.linear_l2,
            )  # fmt: skip
            if space.metric == "l2":
                op, indexable = "<#>", False
    if not np.all(np.isfinite(q)):
        raise InvalidInput("the query vector is not finite")
    norm = float(np.linalg.norm(q))
    if norm == 0 and (space.metric == "cosine" or spec.positive):
        raise InvalidInput("the query vector is all zeros; it has no direction to rank by")
    if space.metric == "cosine":
        q = q / norm  # the ranking is unchanged and halfvec's range is safe
    if space.storage == "halfvec" and float(np.abs(q).max()) > 65504:
        raise InvalidInput("the query vector holds values beyond the half-precision range")
    return q, op, indexable
