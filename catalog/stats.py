"""``embcat stats``: what each exchange dtype costs and loses for one collection.

- bytes per embedding in float32 / float16 / int8 / binary (payload, and as exported in the
  GeoParquet column);
- the compression ratio against the source imagery bytes the manifests recorded
  (``source_bytes``, each publish's share for the items it inserted; else the collection
  JSON's ``embcat:source_bytes``);
- the recall@10 of float16 / int8 / binary against float32 on a seeded sample of queries
  (exact search with numpy in the space's metric; the sample vectors are the corpus);
- which similarity index kind suits the data (``catalog.index_advice``): the recall@10 that
  the binary index kinds keep on the sample (sign bits of the centred vectors, the
  nearest by Hamming distance re-ranked exactly, as ``catalog.similarity`` searches them),
  and the kind it advises: a binary kind (``ivfflat-bit``, ~120 B of index a vector) where
  that recall holds, ``hnsw-halfvec`` (~2 KB a vector) where it does not. A space of kind
  ``auto`` gets the same judgement at its first index build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from embcat.catalog.errors import InvalidInput, NotFound, translated
from embcat.catalog.index_advice import IndexAdvice, advise, exact_topk, recall_at_k
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


def collection_stats(
    conn: psycopg.Connection,
    collection_id: str,
    *,
    sample: int = 5000,
    queries: int = 100,
    k: int = 10,
    seed: int = 0,
) -> CollectionStats:
    """The dtypes' figures on a sample of ``sample`` vectors (``queries`` of them as
    queries), and the index advice on the same sample."""
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
    truth = exact_topk(corpus, corpus[qidx], space.metric, k) if nq else np.zeros((0, k), int)
    stats = RangeStats(space.dimensions)
    stats.update(corpus)
    for dtype in DTYPES:
        quant = {"int8": int8_quantization(stats), "binary": BINARY_QUANTIZATION}.get(dtype)
        approx = dequantize(quantize(corpus, dtype, quant), dtype, space.dimensions, quant)
        if dtype == "binary":  # binary search ranks by Hamming distance = L2 on +-1 vectors
            found = exact_topk(approx, approx[qidx], "l2", k) if nq else truth
        else:
            found = exact_topk(approx, approx[qidx], space.metric, k) if nq else truth
        per = bytes_per_vector(dtype, space.dimensions)
        ratio = round(source / (per * items), 1) if source and items else None
        out.dtypes.append(DtypeStats(dtype, per, recall_at_k(truth, found), ratio))
    if nq:
        out.index = advise(space, corpus, queries=nq, seed=seed)
    return out
