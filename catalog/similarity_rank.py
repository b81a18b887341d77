"""Ranking: the strategy (exact or index) and the query that finds the best hits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import psycopg
from pgvector import HalfVector, Vector
from psycopg import sql

from embcat.catalog.errors import InvalidInput
from embcat.catalog.filters import RowFilter
from embcat.catalog.similarity_estimates import _estimates
from embcat.catalog.similarity_session import _set_local
from embcat.catalog.similarity_settings import SimilaritySettings
from embcat.catalog.similarity_spec import Hit, SimilaritySpec
from embcat.catalog.store import embedding_reads, shards
from embcat.catalog.store.spaces import Space

Strategy = Literal["exact", "index"]


@dataclass(frozen=True)
class RankContext:
    """Everything one ranking needs, resolved before it runs (replaces a 13-argument call).

    ``query``/``operator``/``indexable``: the query vector, the pgvector operator to rank
    with and whether the space's index can serve it (``catalog.similarity_fewshot``);
    ``rows_filter``: the search's filter rendered for embedding rows; ``wanted``: offset +
    limit; ``stats``: the tables' sizes (the estimate cache's key), read beforehand."""

    conn: psycopg.Connection
    spec: SimilaritySpec
    space: Space
    settings: SimilaritySettings
    query: np.ndarray
    operator: str
    indexable: bool
    rows_filter: RowFilter
    wanted: int
    item_columns: sql.Composable | None = None
    stats: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class _Sources:
    filtered: sql.Composed  # FROM .. WHERE of the filtered rows (the estimate's query)
    base: sql.Composed  # the same without the example items (the ranking's)
    distance: sql.Composed


def _sources(ctx: RankContext) -> _Sources:
    space = ctx.space
    vec = sql.SQL(space.vector_sql("e"))
    qv = sql.SQL("%(q)s::{}").format(sql.SQL(space.sql_type))
    distance = sql.SQL("{vec} {op} {q}").format(vec=vec, op=sql.SQL(ctx.operator), q=qv)
    # The parts of the filter the embedding rows answer themselves (collection, item id,
    # their copies of the item geometry and times, migrations 0007 and 0026): checked on
    # the tuple the index scan already holds, served by the rows' own indexes in the exact
    # strategy. The estimate leaves the few example items in (no difference to the count,
    # and the same filter then has the same text, whatever the query item: see _estimates).
    filtered = embedding_reads.rows_source(space.id, ctx.rows_filter.for_estimate())
    refs = [(r.collection, r.id) for r in ctx.spec.references]
    base = embedding_reads.rows_source(space.id, ctx.rows_filter, exclude=refs)
    return _Sources(filtered, base, distance)


def check_exact_cap(ctx: RankContext, filtered: sql.Composed) -> None:
    """An ``exact`` request over more than ``max_exact_rows`` filtered rows: InvalidInput.

    A cost cap: an exact scan reads every filtered vector (11 s for a 20,000-vertex
    intersects over the whole space); past the cap the client narrows the filter or lets
    the index answer. Counted, not estimated (planner estimates of a fresh collection can
    be off by orders of magnitude), and the count stops at the cap."""
    cap = ctx.settings.max_exact_rows
    if not ctx.spec.exact or cap <= 0:
        return
    capped = sql.SQL("select count(*) from (select 1 {} limit {}) c").format(
        filtered, sql.Literal(cap + 1)
    )
    found = ctx.conn.execute(capped).fetchone()  # no parameters: literals stay as they are
    if found is not None and int(found[0]) > cap:
        raise InvalidInput(
            f"an exact similarity search would scan more than {cap} vectors:"
            " narrow the filter or drop 'exact'"
        )


def choose_strategy(ctx: RankContext, filtered: sql.Composed) -> tuple[Strategy, float]:
    """Exact or index, and the filtered row estimate (-1 when none was needed).

    Exact when asked for, when the index cannot serve, or when the filter leaves fewer rows
    than ``exact_threshold`` or than the bar of ``_exact_bar``; else the index."""
    settings, space = ctx.settings, ctx.space
    indexable = ctx.indexable and not (space.binary and space.center is None)
    # (a binary kind whose index was never built: nothing to scan)
    if ctx.spec.exact or not indexable:
        return "exact", -1.0
    # Excluding the few example items is no filter: only a filter can make the candidates
    # a small fraction of the space. Both estimates come from one EXPLAIN (a UNION ALL of
    # the two counts' plans).
    compare = settings.exact_fraction > 0 and not ctx.rows_filter.empty
    queries = [sql.SQL("select 1 {}").format(filtered)]
    if compare:
        queries.append(
            sql.SQL("select 1 {}").format(embedding_reads.rows_source(space.id, RowFilter()))
        )
    estimates = _estimates(ctx.conn, queries, ctx.stats)
    estimate = estimates[0]
    if estimate < settings.exact_threshold:
        return "exact", estimate
    if compare and estimate < _exact_bar(settings, ctx.wanted, estimates[1]):
        return "exact", estimate
    return "index", estimate


def rank(ctx: RankContext) -> tuple[list[Hit], Strategy, float]:
    """The ``wanted`` best hits, the strategy that found them and the filtered estimate."""
    src = _sources(ctx)
    check_exact_cap(ctx, src.filtered)
    strategy, estimate = choose_strategy(ctx, src.filtered)
    params: dict[str, Any] = {"q": _query_param(ctx.query, ctx.space)}
    sharded = shards.is_sharded(ctx.conn, ctx.space.id)  # then ranked on every shard
    rows: list[tuple[Any, ...]] = []
    cur: psycopg.Cursor[Any] | None = None
    if strategy == "index":
        cur = _index_scan(ctx, src, params, sharded)
        rows = cur.fetchall()
        if len(rows) < ctx.wanted:  # the scan budget ran out: fall back to an exact answer
            strategy = "exact"
    if strategy == "exact":
        ranked = sql.SQL(
            "with c as materialized (select e.collection_id, e.item_id, {d} as d {base})"
            " select collection_id, item_id, d from c order by d, collection_id, item_id"
            " limit {n}"
        ).format(d=src.distance, base=src.base, n=sql.Literal(ctx.wanted))
        cur = _execute(ctx, ranked, params, sharded)
        rows = cur.fetchall()
    return _hits(ctx, cur, rows), strategy, estimate


def _execute(
    ctx: RankContext, ranked: sql.Composed, params: dict[str, Any], sharded: bool
) -> psycopg.Cursor[Any]:
    """Run a ranking query (on every shard of a sharded space, its top-k merged in SQL:
    catalog.shards) with the hits' item columns joined."""
    if sharded:
        ranked = shards.ranked_across(ctx.conn, ctx.space, ranked, params, ctx.wanted)
    ranked = embedding_reads.with_items(ranked, ctx.item_columns)
    return ctx.conn.execute(shards.escaped(ctx.conn, ranked), params)


def _index_scan(
    ctx: RankContext, src: _Sources, params: dict[str, Any], sharded: bool
) -> psycopg.Cursor[Any]:
    """The index strategy's query, executed (its cursor)."""
    space, settings, n = ctx.space, ctx.settings, sql.Literal(ctx.wanted)
    if space.binary:
        # Over-fetch by Hamming distance of the centred sign bits (the index's expression),
        # then rank the candidates by the exact distance on the stored vector.
        candidates = _candidates(settings, ctx.wanted)
        if space.index_kind == "hnsw-bit":
            _set_local(ctx.conn, {"hnsw.ef_search": str(min(max(candidates, 40), 1000))})
        probes = ivfflat_probes(settings, space)
        if space.index_kind == "ivfflat-bit" and probes != settings.ivfflat_probes:
            _set_local(
                ctx.conn,
                {"ivfflat.probes": str(probes),
                 "ivfflat.max_probes": str(max(probes, settings.ivfflat_max_probes))},
            )  # fmt: skip
        direction = bool(ctx.spec.positive) and ctx.spec.method == "linear"
        params["code"] = space.code_of(ctx.query, direction=direction)
        ranked = sql.SQL(
            "select collection_id, item_id, d from (select e.collection_id, e.item_id,"
            " {d} as d {base} order by {code} <~> %(code)s::bit({dims}) limit {r}) c"
            " order by d, collection_id, item_id limit {n}"
        ).format(
            d=src.distance, base=src.base, code=sql.SQL(space.code_sql("e")),
            dims=sql.Literal(space.dimensions), r=sql.Literal(candidates), n=n,
        )  # fmt: skip
        return _execute(ctx, ranked, params, sharded)
    ranked = sql.SQL(
        "select e.collection_id, e.item_id, {d} as d {base} order by {d} limit {n}"
    ).format(d=src.distance, base=src.base, n=n)
    if settings.iterative_scan == "relaxed_order":
        ranked = sql.SQL(
            "with c as materialized ({}) select collection_id, item_id, d from c order by d"
        ).format(ranked)
    return _execute(ctx, ranked, params, sharded)


def _hits(
    ctx: RankContext, cur: psycopg.Cursor[Any] | None, rows: list[tuple[Any, ...]]
) -> list[Hit]:
    description = cur.description if cur is not None else None
    names = [c.name for c in description or ()][3:] if rows and ctx.item_columns else []
    return [
        Hit(
            r[0],
            r[1],
            float(r[2]),
            _score(float(r[2]), ctx.operator, ctx.space.metric),
            dict(zip(names, r[3:], strict=True)) if names and r[3] is not None else None,
        )
        for r in rows
    ]


def ivfflat_probes(settings: SimilaritySettings, space: Space) -> int:
    """``ivfflat.probes`` for the space's IVFFlat index: the setting, or the share
    ``ivfflat_probes_fraction`` of the lists it was built with when that is more."""
    lists = int((space.index_params or {}).get("lists") or 0)
    return max(settings.ivfflat_probes, math.ceil(settings.ivfflat_probes_fraction * lists))


def _candidates(settings: SimilaritySettings, wanted: int) -> int:
    """Candidates a binary kind fetches by Hamming distance for ``wanted`` results."""
    return max(settings.rerank_candidates, settings.rerank_factor * wanted)


def _exact_bar(settings: SimilaritySettings, wanted: int, rows: float) -> float:
    """Filtered row estimate below which an exact scan beats the index, of ``rows``.

    An index scan under a filter of F rows visits about c·N/F index tuples to find its c
    candidates, an exact scan F rows: they cost the same near F = sqrt(c·N), with c the
    candidates a binary kind re-ranks (``_candidates``). The same bar holds for HNSW over
    halfvec (migration 0027): with only k rows to find, its iterative scan under such a
    filter was both slower and far less exact than the scan (isotropic mixture, 1M x 768,
    a 1 % bbox: 36 ms at recall@10 0.69 against 24 ms at 1.000; benchmarks/README.md,
    Scale, round 5). ``exact_fraction`` of the rows stays a lower bound.
    """
    return max(
        settings.exact_fraction * rows,
        math.sqrt(_candidates(settings, wanted) * max(rows, 0.0)),
    )


def _query_param(q: np.ndarray, space: Space) -> HalfVector | Vector:
    """The query vector as a parameter of the space's type, sent once in binary.

    Measured at 1M x 768: ~1 ms less per query than a text literal (formatted in Python,
    parsed by the server, twice: in the select list and in the ORDER BY). A binary float8[]
    cast to the vector type in SQL is no alternative: it was evaluated per row.
    """
    return HalfVector(q) if space.storage == "halfvec" else Vector(q)


def _score(distance: float, op: str, metric: str) -> float:
    if op == "<=>":
        return 1.0 - distance
    return -distance


__all__ = ["RankContext", "Strategy", "check_exact_cap", "choose_strategy", "rank"]
