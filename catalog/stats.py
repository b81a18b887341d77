"""``embcat stats``: what each exchange dtype costs and loses for one collection.

- bytes per embedding in float32 / float16 / int8 / binary (payload, and as exported in the
  GeoParquet column);
- the compression ratio against the source imagery bytes the manifests recorded
  (``source_bytes``, each publish's share for the items it inserted; else the collection
  JSON's ``embcat:source_bytes``);
- the recall@10 of float16 / int8 / binary against float32 on a seeded sample of queries
  (exact search with numpy in the space's metric; the sample vectors are the corpus);
- which similarity index kind suits the data (``IndexAdvice``): the recall@10 that the
  binary index kinds would give on the sample (sign bits of the centred vectors, the
  candidates by Hamming distance re-ranked exactly, as ``catalog.similarity`` searches
  them), and the kind recommended from it: a binary kind (``ivfflat-bit``, ~120 B of index
  a vector) where that recall holds, ``hnsw-halfvec`` (~2 KB a vector) where it does not.
  Encoder output lies near a low-dimensional manifold and ranks well by centred sign bits
  (1M x 768 manifold: 0.998); isotropic data (the Gaussian-mixture worst case) does not
  (200k: 0.38, against 0.89 for hnsw-halfvec; benchmarks/README.md, Scale).

The candidate count is scaled to the sample: a search over ``items`` rows re-ranks
``max(rerank_candidates, 10 k)`` of them, so the sample re-ranks the same share of its rows
(at least k). It is an estimate; ``bench_scale.py`` measures a collection's kinds exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from embcat.catalog.errors import InvalidInput, NotFound, translated
from embcat.catalog.quantize import (
    BINARY_QUANTIZATION,
    DTYPES,
    RangeStats,
    bytes_per_vector,
    dequantize,
    int8_quantization,
    quantize,
)
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import embedding_reads, publishes
from embcat.catalog.store.spaces import Space, collection_space


@dataclass
class DtypeStats:
    dtype: str
    bytes_per_embedding: int
    recall_at_10: float
    compression_vs_source: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "bytes_per_embedding": self.bytes_per_embedding,
            "recall_at_10": round(self.recall_at_10, 4),
            "recall_loss": round(1.0 - self.recall_at_10, 4),
            "compression_vs_source": self.compression_vs_source,
        }


# A binary kind is recommended when its estimated recall@10 reaches this.
BINARY_RECALL_FLOOR = 0.95


@dataclass
class IndexAdvice:
    current: str
    binary_recall_at_10: float
    candidates: int
    recommended: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "binary_recall_at_10": round(self.binary_recall_at_10, 4),
            "candidates_in_sample": self.candidates,
            "recommended": self.recommended,
            "reason": self.reason,
        }


@dataclass
class CollectionStats:
    collection_id: str
    items: int
    dimensions: int
    metric: str
    source_bytes: int | None
    sample: int
    queries: int
    dtypes: list[DtypeStats] = field(default_factory=list)
    index: IndexAdvice | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index.as_dict() if self.index else None,
            "collection": self.collection_id,
            "items": self.items,
            "dimensions": self.dimensions,
            "metric": self.metric,
            "source_bytes": self.source_bytes,
            "sample": self.sample,
            "queries": self.queries,
            "dtypes": [d.as_dict() for d in self.dtypes],
        }


def _source_bytes(conn: psycopg.Connection, collection_id: str) -> int | None:
    """Source bytes of the collection's chips: each publish adds its manifest's share for
    the items it inserted (``source_bytes · inserted / rows``), so that a re-publish (a
    rewritten manifest of the same chips, an upsert of new vectors for them) adds nothing.
    Collections without publish records fall back to ``embcat:source_bytes``."""
    found = publishes.source_bytes(conn, collection_id)
    if found is None:
        found = store_collections.stac_bigint(conn, collection_id, "embcat:source_bytes")
    return int(found) if found else None


def _sample(conn: psycopg.Connection, cid: str, space: Space, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` vectors picked by a seeded hash of the id (repeatable, no full sort)."""
    rows = embedding_reads.hashed_sample(conn, cid, space, n, seed)
    if not rows:
        return np.zeros((0, space.dimensions), dtype=np.float32)
    return np.stack([np.asarray(r[0].to_numpy(), dtype=np.float32) for r in rows])


def _topk(corpus: np.ndarray, queries: np.ndarray, metric: str, k: int) -> np.ndarray:
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
    part = np.argpartition(-score, k - 1, axis=1)[:, :k]
    return part


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
        best = _topk(corpus[cand], queries[i : i + 1], space.metric, k)[0]
        found[i] = cand[best]
    return found


def _index_advice(space: Space, binary_recall: float, candidates: int) -> IndexAdvice:
    if binary_recall >= BINARY_RECALL_FLOOR:
        recommended = "ivfflat-bit"
        reason = (
            f"binary codes re-ranked keep recall@10 {binary_recall:.3f} on this data"
            f" (>= {BINARY_RECALL_FLOOR}): about 120 B of index a vector"
        )
    else:
        recommended = "hnsw-halfvec"
        reason = (
            f"binary codes re-ranked reach only recall@10 {binary_recall:.3f} on this data"
            f" (< {BINARY_RECALL_FLOOR}; isotropic-like vectors): index the halfvec vectors"
        )
    return IndexAdvice(space.index_kind, binary_recall, candidates, recommended, reason)


def recall_at_k(truth: np.ndarray, found: np.ndarray) -> float:
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found, strict=True))
    return hits / max(truth.size, 1)


def collection_stats(
    conn: psycopg.Connection,
    collection_id: str,
    *,
    sample: int = 5000,
    queries: int = 100,
    k: int = 10,
    seed: int = 0,
    rerank_candidates: int = 300,
    rerank_factor: int = 10,
) -> CollectionStats:
    """``rerank_candidates`` / ``rerank_factor``: the binary kinds' candidate rule
    (``SimilaritySettings``), for the index advice."""
    if sample < 2 or queries < 1:
        raise InvalidInput("sample must be >= 2 and queries >= 1")
    with translated():
        space = collection_space(conn, collection_id)
        if space is None:
            raise NotFound(f"collection {collection_id!r} has no embeddings yet")
        items = embedding_reads.count(conn, collection_id, space.id)
        source = _source_bytes(conn, collection_id)
        corpus = _sample(conn, collection_id, space, sample, seed)
    rng = np.random.default_rng(seed)
    nq = min(queries, len(corpus))
    qidx = rng.choice(len(corpus), size=nq, replace=False) if nq else np.zeros(0, int)
    out = CollectionStats(
        collection_id, items, space.dimensions, space.metric, source, len(corpus), nq
    )
    truth = _topk(corpus, corpus[qidx], space.metric, k) if nq else np.zeros((0, k), int)
    stats = RangeStats(space.dimensions)
    stats.update(corpus)
    for dtype in DTYPES:
        quant = {"int8": int8_quantization(stats), "binary": BINARY_QUANTIZATION}.get(dtype)
        approx = dequantize(quantize(corpus, dtype, quant), dtype, space.dimensions, quant)
        if dtype == "binary":  # binary search ranks by Hamming distance = L2 on +-1 vectors
            found = _topk(approx, approx[qidx], "l2", k) if nq else truth
        else:
            found = _topk(approx, approx[qidx], space.metric, k) if nq else truth
        per = bytes_per_vector(dtype, space.dimensions)
        ratio = round(source / (per * items), 1) if source and items else None
        out.dtypes.append(DtypeStats(dtype, per, recall_at_k(truth, found), ratio))
    if nq:
        wanted = max(rerank_candidates, rerank_factor * k)
        share = max(k, int(np.ceil(wanted * len(corpus) / max(items, len(corpus)))))
        found = binary_rerank_topk(corpus, corpus[qidx], space, share, k)
        out.index = _index_advice(space, recall_at_k(truth, found), share)
    return out
