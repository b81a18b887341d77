"""Similarity search: k nearest items of one embedding space, combined with any STAC filter.

The clause (``SimilaritySpec``) names the query in one of three ways:

- ``{"item": {"collection": C, "id": I}}``: the item's stored vector. The item itself is
  left out of the results (it would always be first, at distance 0).
- ``{"vector": [...], "collection": C}``: a raw vector of the collection's space; its length
  must equal the space's dimensions and every value must be finite.
- ``{"positive": [refs], "negative": [refs], "method": "prototype" | "linear"}``: few-shot
  examples (left out of the results too).

  *prototype* (Rocchio): with p̄ and n̄ the means of the positive and negative vectors
  (each vector first scaled to unit length in cosine spaces),
  ``q = p̄ + γ·(p̄ − n̄)`` (γ = ``negative_weight``; without negatives ``q = p̄``), ranked by
  the space's metric.

  *linear*: an L2-regularised logistic regression ``σ(w·x + b)`` fitted by full-batch
  gradient descent (class-balanced, ``linear_iterations`` steps) on the positives (label 1)
  against the explicit negatives together with a fixed pseudo-random sample of the space
  (``background_sample`` items; the negatives' half of the weight split equally between
  the two when both are given). Trained against explicit negatives alone, the classifier
  only learns "far from the negatives": its decision value grows past the positives, and
  with a negative class on one side it ranked the classes beyond the positives' first
  (issue 14, D2); the background makes it tell the positives from everything else. In
  cosine spaces (features scaled to unit length) items are ranked by cosine distance to
  ``p̂ + ŵ``, the unit mean of the positives plus the unit classifier direction: like
  the positives and, among those, away from the negatives. In inner-product spaces
  ``<#>`` against ``w`` ranks by the decision value; in L2 spaces that ranking runs as an
  exact scan (the L2 index does not order by inner product).

Results carry ``distance`` (the pgvector operator's value: cosine distance, L2 distance,
or negative inner product) and ``score`` (1 − distance, −distance, −distance: larger is
better). Vectors of different spaces are never compared: every query joins
``embeddings.space_id`` of the resolved space and uses the space's cast, so the partial
HNSW index applies.

Filters: ``area`` (a geometry: the search's bbox or intersects) is tested on the
embedding rows' own copy of the item geometry (``embeddings.geometry``, migration 0007),
so that a spatial filter costs no join: the index scan checks it on the tuple it already
holds, and the exact strategy reads ``embeddings`` through its GiST index. A datetime
window likewise runs on the rows' copy of the item's times (migration 0026) through their
``(datetime)`` index. A ``catalog.filters.Filter`` renders those parts on ``embeddings e``;
only the rest (CQL2 ``filter``, ``query``, ``q``: the item's properties) joins the items.

Query strategy: the filtered row count F is estimated with ``EXPLAIN`` (remembered for a
minute per filter while the tables' sizes and row counts stay the same). When F is below
``exact_threshold`` rows, below ``exact_fraction`` of the space's N rows or below
sqrt(c·N) (c: the candidates, ``similarity_rank._exact_bar``), or with ``exact``,
distances are computed for every filtered row
(a materialised CTE keeps the planner off the index) and sorted: exact. Otherwise the
index is scanned with iterative scans (so that selective filters still yield their rows;
such a scan visits about c·N/F index tuples, an exact scan F rows, hence the relative rule),
``ef_search = max(requested or default, 2·(limit+offset))`` within ``[ef_search_min,
ef_search_max]``; should the index scan return fewer rows than asked for (its scan budget
ran out under a selective filter the estimate missed), the query is repeated exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector, Vector
from psycopg import sql

from embcat.catalog import metrics
from embcat.catalog.errors import InvalidInput, NotFound, translated
from embcat.catalog.filters import Filter, RowFilter
from embcat.catalog.settings import defaults
from embcat.catalog.similarity_fewshot import (
    background_sample,
    linear_direction,
    linear_query,
    prototype,
    query_vector,
)
from embcat.catalog.similarity_rank import RankContext, rank
from embcat.catalog.similarity_session import _put_back, _set_local_query, _vector_adapters
from embcat.catalog.similarity_settings import IterativeScan, SimilaritySettings
from embcat.catalog.similarity_spec import Hit, ItemRef, Plan, SimilaritySpec, parse_spec
from embcat.catalog.store.embedding_reads import ITEM_VECTOR_SQL, STATS_SQL
from embcat.catalog.store.spaces import COLLECTION_SPACES_SQL, Space, space_from_row

_SPACES_SQL = COLLECTION_SPACES_SQL


def _scope(spec: SimilaritySpec, collections: Sequence[str] | None) -> list[str]:
    named = [r.collection for r in spec.references]
    if spec.vector is not None and spec.collection:
        named.append(spec.collection)
    scope = list(dict.fromkeys([*named, *(collections or [])]))
    if not scope:
        raise InvalidInput("a raw 'vector' needs 'collection' (or search 'collections')")
    return scope


def _space_of(scope: list[str], rows: Sequence[tuple[Any, ...]]) -> Space:
    """The one space the query and every searched collection share (InvalidInput if not),
    from the rows of ``_SPACES_SQL``."""
    by_id = {r[0]: r[1:] for r in rows}
    unknown = [cid for cid in scope if cid not in by_id]
    if unknown:
        raise NotFound(f"collection(s) not found: {', '.join(unknown)}")
    spaces: dict[str, Space] = {}
    without = []
    for cid in scope:
        found = by_id[cid]
        if found[0] is None:
            without.append(cid)
        else:
            spaces[cid] = space_from_row(found)
    if without:
        raise InvalidInput(
            f"collection(s) without embeddings cannot be searched by similarity: "
            f"{', '.join(without)}"
        )
    distinct = {s.id for s in spaces.values()}
    if len(distinct) > 1:
        listing = "; ".join(
            f"{cid}: {s.encoder_name} {s.encoder_version} ({s.dimensions}d, {s.metric})"
            for cid, s in spaces.items()
        )
        raise InvalidInput(
            "the collections are in different embedding spaces and cannot be compared: " + listing
        )
    return next(iter(spaces.values()))


def similar(
    conn: psycopg.Connection,
    spec: SimilaritySpec,
    where: Filter | sql.Composable | None,
    limit: int,
    offset: int = 0,
    *,
    collections: Sequence[str] | None = None,
    settings: SimilaritySettings | None = None,
    item_columns: sql.Composable | None = None,
    area: sql.Composable | None = None,
) -> list[Hit]:
    """Items most similar to the clause among those matching ``where``.

    ``where``: a ``catalog.filters.Filter`` (the search's filters: it renders the parts
    the embedding rows answer themselves on ``embeddings e`` and joins ``items`` only for
    the rest; its collections also scope the search), or a boolean over ``items i``
    (None: no filter) together with ``collections`` and ``area``: a geometry expression
    (EPSG:4326, e.g. ``catalog.search.spatial_filter``) tested against the embedding
    rows' own copy of the item geometry.
    ``item_columns``: a SELECT list over ``items i`` read in the same query for each hit
    (``Hit.item``, a dict by column name), e.g. ``catalog.stac.ITEM_COLUMNS``.
    """
    return similar_with_plan(
        conn,
        spec,
        where,
        limit,
        offset,
        collections=collections,
        settings=settings,
        item_columns=item_columns,
        area=area,
    )[0]


def similar_with_plan(
    conn: psycopg.Connection,
    spec: SimilaritySpec,
    where: Filter | sql.Composable | None,
    limit: int,
    offset: int = 0,
    *,
    collections: Sequence[str] | None = None,
    settings: SimilaritySettings | None = None,
    item_columns: sql.Composable | None = None,
    area: sql.Composable | None = None,
) -> tuple[list[Hit], Plan]:
    """``similar``, also returning how the query ran."""
    settings = settings or defaults(SimilaritySettings)  # never the environment (callers pass it)
    rows_filter = _rows_filter(where, collections, area)
    if isinstance(where, Filter):
        collections = list(where.collections) or collections
    if limit < 1 or offset < 0:
        raise InvalidInput("limit must be >= 1 and the offset >= 0")
    if offset + limit > settings.max_k:
        raise InvalidInput(
            f"similarity results are ranked up to {settings.max_k} items;"
            f" offset {offset} + limit {limit} goes beyond that"
        )
    if spec.ef_search is not None and not (
        settings.ef_search_min <= spec.ef_search <= settings.ef_search_max
    ):
        raise InvalidInput(
            f"ef_search must be between {settings.ef_search_min} and {settings.ef_search_max}"
        )
    started = time.perf_counter()
    with translated():
        if conn.autocommit:
            # SET LOCAL needs a transaction block: an explicit one.
            with conn.transaction():
                hits, plan = _similar(
                    conn, spec, rows_filter, limit, offset, collections, settings, item_columns
                )
        elif conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            # A transaction of our own: its settings (SET LOCAL) end with it. Begun
            # implicitly by the first statements, so BEGIN travels with them.
            try:
                hits, plan = _similar(
                    conn, spec, rows_filter, limit, offset, collections, settings, item_columns
                )
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        else:
            # The caller's transaction: a savepoint, and the settings put back afterwards.
            with conn.transaction():
                hits, plan = _similar(
                    conn, spec, rows_filter, limit, offset, collections, settings,
                    item_columns, restore=True,
                )  # fmt: skip
    metrics.observe_similarity(time.perf_counter() - started, plan.strategy)
    return hits, plan


def _rows_filter(
    where: Filter | sql.Composable | None,
    collections: Sequence[str] | None,
    area: sql.Composable | None,
) -> RowFilter:
    """``similar``'s filter arguments as one RowFilter over ``embeddings e``."""
    if isinstance(where, Filter):
        if collections or area is not None:
            raise ValueError("give collections and area in the Filter, not beside it")
        return where.for_embeddings()
    conditions: list[sql.Composable] = []
    if collections:
        conditions.append(
            sql.SQL("e.collection_id = any({})").format(sql.Literal(list(collections)))
        )
    if area is not None:
        conditions.append(sql.SQL("ST_Intersects(e.geometry, {})").format(area))
    return RowFilter(tuple(conditions), where)


def _similar(
    conn: psycopg.Connection,
    spec: SimilaritySpec,
    rows_filter: RowFilter,
    limit: int,
    offset: int,
    collections: Sequence[str] | None,
    settings: SimilaritySettings,
    item_columns: sql.Composable | None,
    *,
    restore: bool = False,
) -> tuple[list[Hit], Plan]:
    wanted = limit + offset
    ef = min(
        max(spec.ef_search or settings.ef_search_default, 2 * wanted, settings.ef_search_min),
        settings.ef_search_max,
    )
    # Every setting either strategy needs (the hnsw ones are inert in an exact scan), set
    # in the first round trip together with the space lookup and the query item's vector.
    gucs = {
        "hnsw.ef_search": str(ef),
        "hnsw.iterative_scan": settings.iterative_scan,
        "hnsw.max_scan_tuples": str(settings.max_scan_tuples),
        "work_mem": f"{settings.work_mem_mb}MB",
        # the ivfflat ones serve the ivfflat-bit kind (inert otherwise)
        "ivfflat.probes": str(settings.ivfflat_probes),
        "ivfflat.iterative_scan": "relaxed_order",
        "ivfflat.max_probes": str(settings.ivfflat_max_probes),
        "jit": "off",
        "max_parallel_workers_per_gather": "0",
    }
    scope = _scope(spec, collections)
    _vector_adapters(conn)
    with conn.pipeline():
        set_cur = conn.execute(*_set_local_query(gucs))
        space_cur = conn.execute(_SPACES_SQL, (scope,))
        vector_cur = (
            conn.execute(ITEM_VECTOR_SQL, (spec.item.collection, spec.item.id), binary=True)
            if spec.item is not None
            else None
        )
        stats_cur = conn.execute(STATS_SQL)
    old_row = set_cur.fetchone()
    assert old_row is not None
    old = dict(zip(gucs, old_row[: len(gucs)], strict=True))
    try:
        space = _space_of(scope, space_cur.fetchall())
        found = vector_cur.fetchone() if vector_cur is not None else None
        q, op, indexable = query_vector(conn, spec, space, settings, item_vector=_stored(found))
        ctx = RankContext(
            conn, spec, space, settings, q, op, indexable, rows_filter, wanted,
            item_columns, stats_cur.fetchone(),
        )  # fmt: skip
        hits, strategy, estimate = rank(ctx)
    finally:
        if restore:
            _put_back(conn, old)
    return hits[offset:], Plan(space, strategy, estimate, ef if strategy == "index" else None)


def _stored(row: tuple[Any, ...] | None) -> np.ndarray | None:
    """The vector of an ``ITEM_VECTOR_SQL`` row (HalfVector or Vector), if any."""
    for value in row or ():
        if isinstance(value, HalfVector | Vector):
            return value.to_numpy()
    return None


__all__ = [
    "Hit",
    "ItemRef",
    "IterativeScan",
    "Plan",
    "SimilaritySettings",
    "SimilaritySpec",
    "background_sample",
    "linear_direction",
    "linear_query",
    "parse_spec",
    "prototype",
    "query_vector",
    "similar",
    "similar_with_plan",
]
