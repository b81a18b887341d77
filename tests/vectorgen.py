"""Seeded synthetic embeddings and a loader that puts them into the catalogue (tests, benchmarks).

``clustered_vectors`` draws a Gaussian mixture (so that nearest neighbours are meaningful),
``plant_neighbours`` places known near neighbours around chosen queries, ``grid_points``
spreads item locations over a lon/lat grid, and ``load_collection`` writes a collection,
its items, its space and its vectors by COPY in the caller's transaction (then indexes and
analyses). Nothing here is specific to one test: other suites may reuse it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
from pgvector import HalfVector, Vector
from psycopg.types.json import Jsonb

from embcat.catalog.store.space_index import ensure_index
from embcat.catalog.store.spaces import Space, get_or_create_space, get_space
from embcat.catalog.vectors import EMBEDDINGS_ASSET, NPY_MEDIA_TYPE, embedding_href, file_fields

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
# EWKB of a point with an SRID: byte order, type | SRID flag, SRID, x, y (little-endian).
_EWKB_POINT = struct.Struct("<BIIdd")


def clustered_vectors(
    n: int, dims: int, *, clusters: int = 50, spread: float = 0.35, seed: int = 0
) -> np.ndarray:
    """``n`` float32 vectors from a mixture of ``clusters`` isotropic Gaussians."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    out = np.empty((n, dims), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):  # bounded memory for 1M x 768
        stop = min(start + step, n)
        noise = rng.standard_normal((stop - start, dims), dtype=np.float32) * spread
        out[start:stop] = centres[labels[start:stop]] + noise
    return out


def planted_classes(
    per_class: int, dims: int, *, classes: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` planted classes of ``per_class`` float32 vectors each, and their labels.

    Like encoder features of land-cover classes: every vector shares one large positive
    component (ReLU features are all positive), the classes lie in order along one shared
    axis (class c at c units: brightness, say) and each has a direction of its own, plus a
    little noise. Prototype search separates them fully; a linear score against a single
    negative class ranks "far from the negative" (the classes beyond the positives' on the
    axis) above the positives' own class: issue 14, D2.
    """
    rng = np.random.default_rng(seed)
    common = np.abs(rng.standard_normal(dims))
    common *= 3.0 / np.linalg.norm(common)
    axis = rng.standard_normal(dims)
    axis /= np.linalg.norm(axis)
    own = rng.standard_normal((classes, dims))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    vectors = np.vstack(
        [
            common + c * axis + own[c] + 0.15 * rng.standard_normal((per_class, dims))
            for c in range(classes)
        ]
    )
    return vectors.astype(np.float32), np.repeat(np.arange(classes), per_class)


def manifold_vectors(
    n: int,
    dims: int,
    *,
    intrinsic: int = 32,
    clusters: int = 200,
    noise: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """``n`` float32 vectors on a curved ``intrinsic``-dimensional manifold in ``dims``.

    Encoder embeddings are not isotropic: they vary along a few tens of directions
    (image representations have an intrinsic dimension of roughly 20-40). Points are drawn
    in an ``intrinsic``-dimensional latent space (a mixture of ``clusters`` unit Gaussians
    whose centres are 3 units apart on average), mapped to ``dims`` through a random
    two-layer tanh network, plus isotropic noise of ``noise`` times the signal's
    per-dimension standard deviation. ``clustered_vectors`` is the opposite extreme
    (each cluster isotropic in all ``dims``), the worst case for any ANN index.
    """
    rng = np.random.default_rng(seed)
    hidden = 4 * intrinsic
    centres = rng.standard_normal((clusters, intrinsic)).astype(np.float32) * (3 / np.sqrt(2))
    # latent coordinates have variance 1 + 4.5: scaled so that tanh sees unit variance
    w1 = rng.standard_normal((intrinsic, hidden)).astype(np.float32) / np.sqrt(5.5 * intrinsic)
    w2 = rng.standard_normal((hidden, dims)).astype(np.float32) / np.sqrt(hidden)
    labels = rng.integers(0, clusters, n)
    out = np.empty((n, dims), dtype=np.float32)
    scale = None
    step = 100_000
    for start in range(0, n, step):  # bounded memory for 1M x 768
        stop = min(start + step, n)
        z = centres[labels[start:stop]] + rng.standard_normal(
            (stop - start, intrinsic), dtype=np.float32
        )
        signal = np.tanh(z @ w1) @ w2
        if scale is None:
            scale = float(signal.std())
        out[start:stop] = signal + rng.standard_normal(signal.shape, dtype=np.float32) * (
            noise * scale
        )
    return out


def plant_neighbours(
    vectors: np.ndarray,
    query_rows: Sequence[int],
    per_query: int,
    *,
    scale: float = 0.02,
    seed: int = 1,
) -> np.ndarray:
    """Overwrite rows after each query row with ``per_query`` close copies of it.

    Row ``q`` is the query; rows ``q+1 .. q+per_query`` become ``vectors[q] + noise`` with a
    noise norm far below the mixture's spread, so they are its clear nearest neighbours.
    """
    rng = np.random.default_rng(seed)
    out = vectors.copy()
    dims = vectors.shape[1]
    for q in query_rows:
        noise = rng.standard_normal((per_query, dims)).astype(np.float32) * scale
        out[q + 1 : q + 1 + per_query] = out[q] + noise
    return out


def grid_points(
    n: int, *, seed: int = 2, extent: tuple[float, float, float, float] = (0, 0, 10, 10)
) -> np.ndarray:
    """``n`` lon/lat points scattered uniformly over ``extent`` (a square-ish grid area)."""
    rng = np.random.default_rng(seed)
    xmin, ymin, xmax, ymax = extent
    return np.column_stack([rng.uniform(xmin, xmax, n), rng.uniform(ymin, ymax, n)]).astype(
        np.float64
    )


def item_ids(n: int, prefix: str = "item-") -> list[str]:
    width = max(len(str(n - 1)), 1)
    return [f"{prefix}{k:0{width}d}" for k in range(n)]


def collection_json(collection_id: str, space: Space, bbox: Sequence[float]) -> dict:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"],
        "id": collection_id,
        "description": f"synthetic embeddings ({space.dimensions}d) for tests",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [list(bbox)]},
            "temporal": {"interval": [[EPOCH.isoformat(), None]]},
        },
        "emb:type": "chip",
        "emb:dimensions": space.dimensions,
        "data_type": "float16" if space.storage == "halfvec" else "float32",
        "links": [],
    }


def load_collection(
    conn: psycopg.Connection,
    collection_id: str,
    vectors: np.ndarray,
    points: np.ndarray | None = None,
    *,
    ids: Sequence[str] | None = None,
    datetimes: Sequence[datetime] | None = None,
    encoder_name: str = "vectorgen",
    encoder_version: str = "1",
    storage: str = "halfvec",
    metric: str = "cosine",
    build_index: bool = True,
    with_assets: bool = True,
    batch: int = 20_000,
    index_kind: str | None = None,
) -> Space:
    """Write a collection, one point item per row of ``vectors`` and their embeddings.

    Runs in the caller's transaction (commit to keep it). Items get ids ``item-000..``
    unless given, a point geometry from ``points`` (default: ``grid_points``), a datetime
    (default: one hour apart from 2024-01-01) and the ``embeddings`` asset of the contract.
    Returns the space; its index (``index_kind``, default: the space's kind, itself the
    application's default for a new space) is built unless ``build_index`` is False.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    n, dims = vectors.shape
    if points is None:
        points = grid_points(n)
    ids = list(ids) if ids is not None else item_ids(n)
    if len(ids) != n or len(points) != n:
        raise ValueError("ids, points and vectors must have the same length")
    space = get_or_create_space(
        conn,
        encoder_name=encoder_name,
        encoder_version=encoder_version,
        dimensions=dims,
        storage=storage,  # type: ignore[arg-type]
        metric=metric,  # type: ignore[arg-type]
        index_kind=index_kind,  # type: ignore[arg-type]
    )
    bbox = [
        float(points[:, 0].min()),
        float(points[:, 1].min()),
        float(points[:, 0].max()),
        float(points[:, 1].max()),
    ]
    conn.execute(
        "insert into collections (id, stac, space_id) values (%s, %s, %s)",
        (collection_id, Jsonb(collection_json(collection_id, space, bbox)), space.id),
    )
    with conn.cursor().copy(
        "copy items (collection_id, id, geometry, bbox, datetime, properties, assets) from stdin"
    ) as copy:
        for k in range(n):
            x, y = float(points[k, 0]), float(points[k, 1])
            when = datetimes[k] if datetimes is not None else EPOCH + timedelta(hours=k)
            assets = {}
            if with_assets:
                assets[EMBEDDINGS_ASSET] = {
                    "href": embedding_href(collection_id, ids[k]),
                    "type": NPY_MEDIA_TYPE,
                    "roles": ["data", "embeddings"],
                    **file_fields(vectors[k], storage),
                }
            copy.write_row(
                (
                    collection_id,
                    ids[k],
                    f"SRID=4326;POINT({x!r} {y!r})",
                    [x, y, x, y],
                    when,
                    json.dumps({"datetime": when.isoformat()}),
                    json.dumps(assets),
                )
            )
    column = space.column
    wrap = HalfVector if storage == "halfvec" else Vector
    with conn.cursor().copy(
        f"copy embeddings (collection_id, item_id, space_id, geometry, {column})"
        " from stdin (format binary)"
    ) as copy:
        # The geometry's binary form is its EWKB (PostGIS's receive function), sent as bytes.
        copy.set_types(["text", "text", "int4", "bytea", storage])
        for start in range(0, n, batch):
            block = vectors[start : start + batch]
            for k in range(len(block)):
                row = start + k
                point = _EWKB_POINT.pack(1, 0x20000001, 4326, points[row, 0], points[row, 1])
                copy.write_row((collection_id, ids[row], space.id, point, wrap(block[k])))
    if build_index:
        ensure_index(conn, space, kind=index_kind)  # type: ignore[arg-type]
    conn.execute("analyze items")
    conn.execute("analyze embeddings")
    return get_space(conn, space.id)
