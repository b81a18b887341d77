"""Which similarity index kind suits a space's data, judged on a sample of its vectors.

The binary kinds (``ivfflat-bit``, ``hnsw-bit``: ~120-400 B of index a 768-d vector) pick
candidates by the Hamming distance of centred sign bits and re-rank them exactly. That
ranks encoder output well (it lies near a low-dimensional manifold) and fails on
isotropic clusters, where sign bits carry almost nothing about who is near whom; there
only ``hnsw-halfvec`` (~2 KB a vector) answers well. ``advise`` measures which case a
space is: the recall@10 of the binary re-rank on a sample, with the sample as corpus.

**The measure.** ``ADVICE_QUERIES`` queries from the sample, the ``ADVICE_CANDIDATES``
(3k) nearest by Hamming distance re-ranked exactly, against the exact top 10 of the
sample. This is a property of the data, not a prediction of the index's recall at N:
scaling the candidates to the sample's share of N (what ``embcat stats`` did before)
under-rated encoder-like data (0.85 on a 5,000 sample of 200k manifold vectors whose
real recall with 300 candidates is 1.000, so it advised the 17x larger index) because a
sample's neighbours lie farther apart than the collection's. Calibrated on 200k x 768 in
one run (``benchmarks/bench_index_advice.py``: the real recall@10 of 300 candidates over
all 200k rows, this measure on 5,000, and the scaled one it replaced):

| data | real | this measure | scaled (10 of 5,000) |
|---|---:|---:|---:|
| manifold, intrinsic 16 / 32 / 64 | 1.00 / 1.00 / 1.00 | 1.00 / 1.00 / 1.00 | 0.86 / 0.85 / 0.80 |
| manifold, noise 0.3; ReLU of it | 1.00; 1.00 | 1.00; 1.00 | 0.83; 0.85 |
| mixture, 50 clusters, spread .2 / .35 / .5 | .33 / .39 / .44 | .52 / .55 / .61 | .25 / .29 / .32 |
| mixture, 500 clusters | 0.945 | 0.947 | 0.85 |

Every data set lies on the same side of ``BINARY_RECALL_FLOOR`` in the first two columns;
the scaled measure put all five encoder-like sets on the wrong side. The
exact re-rank means a binary kind never returns a wrong distance, only a missed
neighbour; the floor decides how many misses are acceptable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from embcat.catalog.store import embedding_reads
from embcat.catalog.store.spaces import AUTO_BIT_MIN_DIMS, IndexKind, Space, kind_indexable

log = logging.getLogger(__name__)

# A binary kind is advised when the measure reaches this.
BINARY_RECALL_FLOOR = 0.95
ADVICE_SAMPLE = 5000
ADVICE_QUERIES = 100
ADVICE_K = 10
ADVICE_CANDIDATES = 3 * ADVICE_K
# Below this many vectors a sample says too little (its 10 nearest are not neighbours):
# an "auto" space keeps its default kind and is judged again at a later build.
ADVICE_MIN_ROWS = 2000


@dataclass
class IndexAdvice:
    current: str
    binary_recall_at_10: float
    candidates: int
    sample: int
    recommended: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "binary_recall_at_10": round(self.binary_recall_at_10, 4),
            "candidates_in_sample": self.candidates,
            "sample": self.sample,
            "recommended": self.recommended,
            "reason": self.reason,
        }


def exact_topk(corpus: np.ndarray, queries: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Row numbers of each query's ``k`` nearest in ``corpus`` (unordered), exactly."""
    if metric == "cosine":
        c = corpus / np.maximum(np.linalg.norm(corpus, axis=1, keepdims=True), 1e-12)
        q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        score = q @ c.T
    elif metric == "inner_product":
        score = queries @ corpus.T
    else:
        score = -(
            (queries**2).sum(1)[:, None] - 2 * queries @ corpus.T + (corpus**2).sum(1)[None, :]
        )
    k = min(k, corpus.shape[0])
    return np.argpartition(-score, k - 1, axis=1)[:, :k]


def recall_at_k(truth: np.ndarray, found: np.ndarray) -> float:
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found, strict=True))
    return hits / max(truth.size, 1)


def binary_rerank_topk(
    corpus: np.ndarray,
    queries: np.ndarray,
    space: Space,
    candidates: int,
    k: int,
) -> np.ndarray:
    """Top ``k`` of each query as the binary index kinds find them: the ``candidates``
    nearest by Hamming distance of the sign bits of the centred vectors (cosine spaces:
    of the unit vectors), re-ranked by the exact distance in the space's metric."""
    x = corpus.astype(np.float64)
    q = queries.astype(np.float64)
    if space.metric == "cosine" and not space.normalized:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    centre = x.mean(axis=0)
    xs = np.where(x - centre > 0, 1.0, -1.0)
    qs = np.where(q - centre > 0, 1.0, -1.0)
    agreement = qs @ xs.T  # d - 2 * Hamming distance
    candidates = max(k, min(candidates, len(corpus)))
    found = np.empty((len(queries), min(k, len(corpus))), dtype=np.int64)
    for i, row in enumerate(agreement):
        cand = np.argpartition(-row, candidates - 1)[:candidates]
        best = exact_topk(corpus[cand], queries[i : i + 1], space.metric, k)[0]
        found[i] = cand[best]
    return found


def binary_recall(
    corpus: np.ndarray, space: Space, *, queries: int = ADVICE_QUERIES, seed: int = 0
) -> float:
    """The measure (module docstring) on ``corpus``, with up to ``queries`` of its rows as
    queries (seeded: the same sample gives the same figure)."""
    nq = min(queries, len(corpus))
    if nq == 0:
        return 1.0
    qidx = np.random.default_rng(seed).choice(len(corpus), size=nq, replace=False)
    truth = exact_topk(corpus, corpus[qidx], space.metric, ADVICE_K)
    found = binary_rerank_topk(corpus, corpus[qidx], space, ADVICE_CANDIDATES, ADVICE_K)
    return recall_at_k(truth, found)


def advise(
    space: Space, corpus: np.ndarray, *, queries: int = ADVICE_QUERIES, seed: int = 0
) -> IndexAdvice:
    """The kind that suits the vectors ``corpus`` samples (the space's current kind is
    reported beside it)."""
    measured = binary_recall(corpus, space, queries=queries, seed=seed)
    if measured >= BINARY_RECALL_FLOOR:
        recommended = "ivfflat-bit"
        reason = (
            f"binary codes re-ranked keep recall@10 {measured:.3f} on this data"
            f" (>= {BINARY_RECALL_FLOOR}): about 120 B of index a vector"
        )
    else:
        recommended = "hnsw-halfvec"
        reason = (
            f"binary codes re-ranked reach only recall@10 {measured:.3f} on this data"
            f" (< {BINARY_RECALL_FLOOR}; isotropic-like vectors): index the halfvec vectors"
        )
    return IndexAdvice(
        space.index_kind, measured, ADVICE_CANDIDATES, len(corpus), recommended, reason
    )


def space_sample(conn: psycopg.Connection, space: Space, n: int, rows: int) -> np.ndarray:
    """About ``n`` of the space's ``rows`` vectors (float32), repeatably: a page sample of
    three times as many rows (all of them in a small space) in a hash order of the ids."""
    percent = min(100.0, 100.0 * 3 * n / rows) if rows > 4 * n else 100.0
    found = embedding_reads.block_sample(conn, space, percent, n)
    if len(found) < n and percent < 100.0:  # too few pages drawn (small rows, few pages)
        found = embedding_reads.block_sample(conn, space, 100.0, n)
    if not found:
        return np.zeros((0, space.dimensions), dtype=np.float32)
    return np.asarray([r[0] for r in found], dtype=np.float32)


def judge_auto(
    conn: psycopg.Connection, space: Space, rows: int
) -> tuple[IndexKind, dict[str, Any]]:
    """The kind of an "auto" space on its data (``catalog.index_advice``), and what to
    record of the judgement; below ADVICE_MIN_ROWS it keeps its kind, still undecided.
    Below AUTO_BIT_MIN_DIMS a code has too few distinct distances, whatever the sample
    says: such spaces are hnsw-halfvec (registration marks only binary defaults "auto";
    ``embcat index build --kind auto`` judges any space). A space of hnsw-bit stays so
    where binary codes rank the data."""
    if rows < ADVICE_MIN_ROWS:
        return space.index_kind, {"decided": False}
    corpus = space_sample(conn, space, ADVICE_SAMPLE, rows)
    if len(corpus) < min(ADVICE_SAMPLE, ADVICE_MIN_ROWS):  # (rows was an over-estimate)
        return space.index_kind, {"decided": False}
    advice = advise(space, corpus)
    kind: IndexKind = space.index_kind
    if space.dimensions < AUTO_BIT_MIN_DIMS:
        kind = "hnsw-halfvec"
    elif advice.recommended == "hnsw-halfvec":
        if space.binary and kind_indexable("hnsw-halfvec", space.storage, space.dimensions):
            kind = "hnsw-halfvec"
            log.warning(
                "space %s: binary codes keep only recall@10 %.3f on a sample of %d of its"
                " vectors (isotropic-like data): indexing it as hnsw-halfvec",
                space.id, advice.binary_recall_at_10, len(corpus),
            )  # fmt: skip
    elif not space.binary and kind_indexable("ivfflat-bit", space.storage, space.dimensions):
        kind = "ivfflat-bit"  # (asked for: embcat index build --kind auto)
    record = {
        "decided": True,
        "binary_recall_at_10": round(advice.binary_recall_at_10, 4),
        "sample": len(corpus),
        "rows": rows,
    }
    return kind, record
