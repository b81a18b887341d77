"""False colour of a collection's embedding field: the first three principal components as RGB.

People judge embeddings by looking. ``false_colour`` fits a PCA on a seeded sample of the
collection's vectors (numpy SVD), projects every vector onto the first three components
inside PostgreSQL (pgvector's inner product, so vectors never leave the database in bulk),
and maps each component to a colour channel with robust scaling (percentiles 2 and 98):
PC1 -> red, PC2 -> green, PC3 -> blue. Spaces with the cosine metric are compared on the
unit sphere, so their vectors are normalised first.

``FalseColourCache`` keeps the result per collection, keyed by the collection's change
version (largest change sequence of its items and tombstones, and its item count): a
publish, update or delete changes the version and the next request recomputes.

What is drawn with the colours (footprints, the PNG) is ``catalog.preview``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from embcat.catalog.errors import NotFound, translated
from embcat.catalog.store import embedding_reads, item_reads
from embcat.catalog.store.spaces import Space, collection_space

SAMPLE_SIZE = 10_000
LOW_PERCENTILE, HIGH_PERCENTILE = 2.0, 98.0

Version = tuple[int, int]


@dataclass(frozen=True)
class FalseColour:
    """RGB colour of every item of a collection that has a vector."""

    collection_id: str
    version: Version
    ids: tuple[str, ...]
    rgb: np.ndarray  # (n, 3) uint8, row i belongs to ids[i]
    explained_variance_ratio: tuple[float, ...]  # of each component used, largest first
    sample_size: int
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({iid: i for i, iid in enumerate(self.ids)})

    @classmethod
    def empty(cls, collection_id: str) -> FalseColour:
        """The colours of a collection without vectors (every footprint is uncoloured)."""
        return cls(collection_id, (0, 0), (), np.zeros((0, 3), dtype=np.uint8), (), 0)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, item_id: str) -> int | None:
        return self._index.get(item_id)

    def hex(self, item_id: str) -> str | None:
        """``#rrggbb`` of an item (None: the item has no vector)."""
        i = self._index.get(item_id)
        if i is None:
            return None
        r, g, b = (int(v) for v in self.rgb[i])
        return f"#{r:02x}{g:02x}{b:02x}"

    def legend(self) -> dict[str, Any]:
        """What the colours mean, for a legend."""
        channels = ["red", "green", "blue"]
        return {
            "channels": [
                {
                    "channel": channels[k],
                    "component": k + 1,
                    "explained_variance_ratio": (
                        self.explained_variance_ratio[k]
                        if k < len(self.explained_variance_ratio)
                        else 0.0
                    ),
                }
                for k in range(3)
            ],
            "scaling": f"percentiles {LOW_PERCENTILE:g}-{HIGH_PERCENTILE:g} of each component",
            "items": len(self.ids),
            "sample_size": self.sample_size,
        }


def collection_version(conn: psycopg.Connection, collection_id: str) -> Version:
    """(largest change sequence of items and tombstones, item count) of a collection."""
    with translated():
        return item_reads.version(conn, collection_id)


def _space_of(conn: psycopg.Connection, collection_id: str) -> Space:
    with translated():
        space = collection_space(conn, collection_id)
    if space is None:
        raise NotFound(f"collection {collection_id!r} has no embeddings yet")
    return space


def _sample(
    conn: psycopg.Connection, collection_id: str, space: Space, count: int, size: int, seed: int
) -> np.ndarray:
    """Up to ``size`` vectors of the collection, chosen reproducibly (Bernoulli, seeded)."""
    share = None
    if count > size:
        # Each row is kept with probability p (over-sampled by 1.5 so LIMIT is usually reached).
        share = (min(100.0, 150.0 * size / count), seed)
    with translated():
        rows = embedding_reads.bernoulli_sample(conn, collection_id, space, size, share)
    if not rows:
        return np.zeros((0, space.dimensions), dtype=np.float32)
    return np.stack([np.asarray(_values(r[0]), dtype=np.float32) for r in rows])


def _values(value: Any) -> Any:
    return value.to_numpy() if hasattr(value, "to_numpy") else value


def principal_components(
    sample: np.ndarray, k: int = 3, *, seed: int = 0, power_iterations: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` principal axes (rows, unit length) and their explained variance ratios.

    A seeded randomised SVD (Halko et al.: a ``k + 7`` column range finder refined by power
    iterations, then the SVD of the small projected matrix): a few passes over the sample
    instead of a full decomposition, which is both faster and far less sensitive to a
    busy machine than LAPACK's full SVD. Signs are fixed (the largest loading of each axis
    is positive) so that the same data always gives the same colours.
    """
    centred = np.asarray(sample, dtype=np.float64)
    centred = centred - centred.mean(axis=0, keepdims=True)
    n, d = centred.shape
    k = min(k, n, d)
    if k == 0:
        return np.zeros((0, d)), np.zeros(0)
    width = min(k + 7, n, d)
    rng = np.random.default_rng(seed)
    y = centred @ rng.standard_normal((d, width))
    for _ in range(power_iterations):
        y, _ = np.linalg.qr(y)
        z, _ = np.linalg.qr(centred.T @ y)
        y = centred @ z
    q, _ = np.linalg.qr(y)
    _, s, vt = np.linalg.svd(q.T @ centred, full_matrices=False)
    axes = vt[:k]
    signs = np.sign(axes[np.arange(k), np.argmax(np.abs(axes), axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    total = float(np.square(centred).sum())
    ratios = s[:k] ** 2 / total if total > 0 else np.zeros(k)
    return axes, ratios


def robust_rgb(projections: np.ndarray) -> np.ndarray:
    """(n, k<=3) projections -> (n, 3) uint8, each channel scaled by its 2nd-98th percentiles.

    A missing component or one without spread gives the mid value 128.
    """
    n = projections.shape[0]
    rgb = np.full((n, 3), 128, dtype=np.uint8)
    if n == 0:
        return rgb
    for k in range(min(3, projections.shape[1])):
        column = projections[:, k]
        lo, hi = np.percentile(column, [LOW_PERCENTILE, HIGH_PERCENTILE])
        if not hi > lo:
            continue
        scaled = np.clip((column - lo) / (hi - lo), 0.0, 1.0)
        rgb[:, k] = np.round(scaled * 255.0).astype(np.uint8)
    return rgb


def false_colour(
    conn: psycopg.Connection,
    collection_id: str,
    *,
    sample_size: int = SAMPLE_SIZE,
    seed: int = 0,
    version: Version | None = None,
) -> FalseColour:
    """Compute the false colour of every item of a collection that has a vector."""
    space = _space_of(conn, collection_id)
    version = version or collection_version(conn, collection_id)
    sample = _sample(conn, collection_id, space, version[1], sample_size, seed)
    if space.metric == "cosine" and len(sample):
        norms = np.linalg.norm(sample, axis=1, keepdims=True)
        sample = sample / np.where(norms > 0, norms, 1.0)
    if len(sample) < 2:
        axes, ratios = np.zeros((0, space.dimensions)), np.zeros(0)
    else:
        axes, ratios = principal_components(sample)
    vector = space.vector_sql("e")
    if space.metric == "cosine":
        vector = f"l2_normalize({vector})"
    # pgvector's <#> is the negative inner product: -(v <#> axis) is the projection.
    columns = "".join(f", -({vector} <#> %(a{k})s::{space.sql_type})" for k in range(len(axes)))
    params = {f"a{k}": _vector_text(axis) for k, axis in enumerate(axes)}
    with translated():
        rows = embedding_reads.per_item(conn, collection_id, space.id, columns, params)
    ids = tuple(r[0] for r in rows)
    projections = np.array([r[1:] for r in rows], dtype=np.float64).reshape(len(rows), len(axes))
    return FalseColour(
        collection_id=collection_id,
        version=version,
        ids=ids,
        rgb=robust_rgb(projections),
        explained_variance_ratio=tuple(round(float(r), 6) for r in ratios),
        sample_size=len(sample),
    )


def _vector_text(values: np.ndarray) -> str:
    return "[" + ",".join(f"{float(v):.7g}" for v in values) + "]"


class FalseColourCache:
    """In-process LRU of ``FalseColour`` per (database, collection), checked against the
    collection's version on every lookup (one cheap indexed query)."""

    def __init__(self, maxsize: int = 16, sample_size: int = SAMPLE_SIZE) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.sample_size = sample_size
        self._entries: OrderedDict[tuple[str, str], FalseColour] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # how many times a false colour was computed (for tests and logs)

    def get(self, conn: psycopg.Connection, collection_id: str) -> FalseColour:
        info = conn.info
        key = (f"{info.host}:{info.port}/{info.dbname}", collection_id)
        version = collection_version(conn, collection_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.version == version:
                self._entries.move_to_end(key)
                return entry
        entry = false_colour(conn, collection_id, sample_size=self.sample_size, version=version)
        with self._lock:
            self.computed += 1
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return entry
