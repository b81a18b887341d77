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
  against the negatives, or, without negatives, against a fixed pseudo-random sample of
  the space (``background_sample`` items). Items are ranked by the decision value ``w·x``:
  in cosine spaces the features are unit vectors, so ranking by cosine distance to ``w``
  is exactly ranking by ``w·x̂ + b``; in inner-product spaces ``<#>`` against ``w`` is the
  same ranking; in L2 spaces the ranking by ``<#>`` runs as an exact scan (the L2 index
  does not order by inner product).

Results carry ``distance`` (the pgvector operator's value: cosine distance, L2 distance,
or negative inner product) and ``score`` (1 − distance, −distance, −distance: larger is
better). Vectors of different spaces are never compared: every query joins
``embeddings.space_id`` of the resolved space and uses the space's cast, so the partial
HNSW index applies.

Query strategy: the filtered row count F is estimated with ``EXPLAIN``. When F is below
``exact_threshold`` rows or below ``exact_fraction`` of the space's N rows (or with
``exact``), distances are computed for every filtered row
(a materialised CTE keeps the planner off the index) and sorted: exact. Otherwise the HNSW
index is scanned with ``hnsw.iterative_scan`` (so that selective filters still yield k rows;
such a scan visits about k·N/F index tuples, an exact scan F rows, hence the relative rule),
``ef_search = max(requested or default, 2·(limit+offset))`` within ``[ef_search_min,
ef_search_max]``; should the index scan return fewer rows than asked for (its scan budget
ran out under a selective filter the estimate missed), the query is repeated exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from catalog import metrics
from catalog.errors import InvalidInput, NotFound, translated
from catalog.spaces import Space

IterativeScan = Literal["strict_order", "relaxed_order"]


class SimilaritySettings(BaseSettings):
    """Limits and tuning of similarity search (environment prefix ``EMBCAT_SIMILARITY_``)."""

    model_config = SettingsConfigDict(env_prefix="EMBCAT_SIMILARITY_", extra="ignore")

    max_k: int = Field(default=1000, ge=1, description="Largest offset + limit of a ranked result.")
    max_examples: int = Field(default=100, ge=1, description="Most positive + negative examples.")
    ef_search_default: int = Field(
        default=100, ge=1, le=1000, description="hnsw.ef_search default."
    )
    ef_search_min: int = Field(
        default=10, ge=1, le=1000, description="Smallest ef_search accepted."
    )
    ef_search_max: int = Field(
        default=1000, ge=1, le=1000, description="Largest ef_search accepted."
    )
    exact_threshold: int = Field(
        default=2_000, ge=0, description="Filtered row estimate below which the search is exact."
    )
    exact_fraction: float = Field(
        default=0.003,
        ge=0,
        le=1,
        description="Exact also below this fraction of the space's rows (filtered estimate).",
    )
    iterative_scan: IterativeScan = Field(
        default="strict_order",
        description="pgvector hnsw.iterative_scan mode for filtered queries.",
    )
    max_scan_tuples: int = Field(
        default=200_000, ge=1, description="hnsw.max_scan_tuples: index tuples one query may visit."
    )
    work_mem_mb: int = Field(default=64, ge=1, description="work_mem for similarity queries.")
    negative_weight: float = Field(default=0.5, ge=0, description="γ of the prototype method.")
    linear_iterations: int = Field(
        default=300, ge=1, le=10_000, description="Gradient steps (linear)."
    )
    linear_l2: float = Field(
        default=1e-2, ge=0, description="L2 regularisation of the linear method."
    )
    background_sample: int = Field(
        default=200, ge=1, description="Background items used as negatives by 'linear' without any."
    )


class ItemRef(BaseModel):
    """An item by collection and id."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, max_length=255)
    id: str = Field(min_length=1, max_length=1024)


class SimilaritySpec(BaseModel):
    """The ``similarity`` clause of a search: exactly one of item, vector or positive."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"item": {"collection": "s2-mosaiks", "id": "tile-0001"}},
                {"vector": [0.12, -0.03, 0.88], "collection": "s2-mosaiks", "exact": True},
                {
                    "positive": [
                        {"collection": "s2-mosaiks", "id": "tile-0001"},
                        {"collection": "s2-mosaiks", "id": "tile-0042"},
                    ],
                    "negative": [{"collection": "s2-mosaiks", "id": "tile-0007"}],
                    "method": "linear",
                    "ef_search": 200,
                },
            ]
        },
    )

    item: ItemRef | None = Field(default=None, description="Find items similar to this item.")
    vector: list[float] | None = Field(
        default=None, min_length=1, max_length=16_000, description="A raw query vector."
    )
    collection: str | None = Field(
        default=None, description="Collection whose space a raw vector belongs to."
    )
    positive: list[ItemRef] | None = Field(
        default=None, min_length=1, description="Positive examples."
    )
    negative: list[ItemRef] = Field(default_factory=list, description="Negative examples.")
    method: Literal["prototype", "linear"] = Field(
        "prototype", description="How examples become a query (see catalog.similarity)."
    )
    exact: bool = Field(default=False, description="Exact search (no approximate index).")
    ef_search: int | None = Field(default=None, ge=1, le=1000, description="HNSW search effort.")

    @model_validator(mode="after")
    def _one_query(self) -> SimilaritySpec:
        given = [name for name in ("item", "vector", "positive") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'item', 'vector' or 'positive'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.vector is not None and not all(math.isfinite(v) for v in self.vector):
            raise ValueError("'vector' holds a value that is not a finite number")
        if self.negative and not self.positive:
            raise ValueError("'negative' examples need 'positive' ones")
        return self

    @property
    def references(self) -> list[ItemRef]:
        """The items named by the clause (excluded from its results)."""
        if self.item is not None:
            return [self.item]
        return [*(self.positive or []), *self.negative]


@dataclass(frozen=True)
class Hit:
    collection_id: str
    item_id: str
    distance: float
    score: float


@dataclass(frozen=True)
class Plan:
    """How a query ran (for tests, logs and EXPLAIN-minded users)."""

    space: Space
    strategy: Literal["exact", "index"]
    estimated_rows: float
    ef_search: int | None


def parse_spec(clause: Any) -> SimilaritySpec:
    """Validate a clause (dict or model), raising InvalidInput with pydantic's message."""
    if isinstance(clause, SimilaritySpec):
        return clause
    from pydantic import ValidationError

    try:
        return SimilaritySpec.model_validate(clause)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
        raise InvalidInput("invalid similarity clause: " + "; ".join(parts)) from exc


def resolve_space(
    conn: psycopg.Connection, spec: SimilaritySpec, collections: Sequence[str] | None = None
) -> Space:
    """The one space the query and every searched collection share (InvalidInput if not)."""
    named = [r.collection for r in spec.references]
    if spec.vector is not None and spec.collection:
        named.append(spec.collection)
    scope = list(dict.fromkeys([*named, *(collections or [])]))
    if not scope:
        raise InvalidInput("a raw 'vector' needs 'collection' (or search 'collections')")
    rows = conn.execute(
        "select c.id, s.id, s.encoder_name, s.encoder_version, s.dimensions, s.storage,"
        " s.metric, s.normalized, s.mlm from collections c"
        " left join embedding_spaces s on s.id = c.space_id where c.id = any(%s)",
        (scope,),
    ).fetchall()
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
            spaces[cid] = Space(
                id=found[0],
                encoder_name=found[1],
                encoder_version=found[2],
                dimensions=found[3],
                storage=found[4],
                metric=found[5],
                normalized=found[6],
                mlm=found[7] or {},
            )
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


def _fetch_vectors(conn: psycopg.Connection, space: Space, refs: Sequence[ItemRef]) -> np.ndarray:
    pairs = [(r.collection, r.id) for r in refs]
    rows = conn.execute(
        sql.SQL(
            "select e.collection_id, e.item_id, {col}::real[] from embeddings e"
            " where e.space_id = %s and (e.collection_id, e.item_id) in ({pairs})"
        ).format(
            col=sql.SQL(space.vector_sql("e")),
            pairs=sql.SQL(", ").join(sql.SQL("(%s, %s)") for _ in pairs),
        ),
        [space.id, *[v for p in pairs for v in p]],
    ).fetchall()
    found = {(c, i): np.asarray(v, dtype=np.float64) for c, i, v in rows}
    missing = [p for p in pairs if p not in found]
    if missing:
        known = conn.execute(
            sql.SQL("select collection_id, id from items where (collection_id, id) in ({})").format(
                sql.SQL(", ").join(sql.SQL("(%s, %s)") for _ in missing)
            ),
            [v for p in missing for v in p],
        ).fetchall()
        known_set = {(c, i) for c, i in known}
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
    iterations: int = 300,
    l2: float = 1e-2,
    learning_rate: float = 0.5,
) -> np.ndarray:
    """Weight vector ``w`` of a class-balanced, L2-regularised logistic regression.

    Minimises ``Σ c_y·log(1 + exp(−s·(w·x + b))) + l2/2·|w|²`` (s = ±1, c_y = 1/(2·n_y))
    by full-batch gradient descent; the bias is not regularised and not returned.
    """
    x = np.vstack([positives, negatives])
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    weight = np.where(y == 1, 0.5 / len(positives), 0.5 / len(negatives))
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


def _background(conn: psycopg.Connection, space: Space, size: int) -> np.ndarray:
    """A fixed pseudo-random sample of the space (block sample, then a hash order)."""
    row = conn.execute(
        "select greatest(reltuples, 0) from pg_class where oid = 'embeddings'::regclass"
    ).fetchone()
    total = float(row[0]) if row else 0.0
    percent = 100.0 if total <= 0 else min(100.0, 100.0 * 20 * size / total)
    query = sql.SQL(
        "select {col}::real[] from embeddings e tablesample system (%s) repeatable (7)"
        " where e.space_id = %s order by md5(e.collection_id || '/' || e.item_id) limit %s"
    ).format(col=sql.SQL(space.vector_sql("e")))
    rows = conn.execute(query, (percent, space.id, size)).fetchall()
    if len(rows) < min(size, 10):
        fallback = sql.SQL(
            "select {col}::real[] from embeddings e where e.space_id = %s"
            " order by md5(e.collection_id || '/' || e.item_id) limit %s"
        ).format(col=sql.SQL(space.vector_sql("e")))
        rows = conn.execute(fallback, (space.id, size)).fetchall()
    return np.asarray([r[0] for r in rows], dtype=np.float64).reshape(-1, space.dimensions)


def query_vector(
    conn: psycopg.Connection,
    spec: SimilaritySpec,
    space: Space,
    settings: SimilaritySettings,
) -> tuple[np.ndarray, str, bool]:
    """The query vector, the pgvector operator to rank with, and whether the index can serve."""
    op = space.distance_op
    indexable = space.indexable
    if spec.item is not None:
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
            if space.metric == "cosine":
                pos = _unit(pos)
            if not len(neg):
                neg = _background(conn, space, settings.background_sample)
                if not len(neg):
                    raise InvalidInput("the space holds no vectors to contrast the examples with")
            if space.metric == "cosine":
                neg = _unit(neg)
            q = linear_direction(
                pos, neg, iterations=settings.linear_iterations, l2=settings.linear_l2
            )
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


def _set_local(conn: psycopg.Connection, values: dict[str, str]) -> dict[str, str | None]:
    """Set GUCs transaction-locally in one round trip; returns the previous values."""
    names = list(values)
    row = conn.execute(
        sql.SQL("select {}, {}").format(
            sql.SQL(", ").join(sql.SQL("current_setting(%s, true)") for _ in names),
            sql.SQL(", ").join(sql.SQL("set_config(%s, %s, true)") for _ in names),
        ),
        [*names, *[v for name in names for v in (name, values[name])]],
    ).fetchone()
    assert row is not None
    return dict(zip(names, row[: len(names)], strict=True))


@contextmanager
def _local_settings(
    conn: psycopg.Connection, values: dict[str, str], *, restore: bool
) -> Iterator[None]:
    """GUCs for the block; put back afterwards when the transaction is the caller's."""
    old = _set_local(conn, values)
    try:
        yield
    finally:
        put_back = {k: v for k, v in old.items() if v is not None}
        if (
            restore
            and put_back
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        ):
            _set_local(conn, put_back)


def _estimates(conn: psycopg.Connection, queries: Sequence[sql.Composable]) -> list[float]:
    """The planner's row estimates of ``queries``, planned together in one round trip."""
    union = sql.SQL(" union all ").join(sql.SQL("({})").format(q) for q in queries)
    row = conn.execute(sql.SQL("explain (format json) {}").format(union)).fetchone()
    assert row is not None
    plan = row[0]
    if isinstance(plan, str):
        import json

        plan = json.loads(plan)
    top = plan[0]["Plan"]
    if len(queries) == 1:
        return [float(top["Plan Rows"])]
    children = top.get("Plans", [])
    if top.get("Node Type") != "Append" or len(children) != len(queries):
        raise AssertionError(f"unexpected plan for the estimates: {top.get('Node Type')}")
    return [float(child["Plan Rows"]) for child in children]


def similar(
    conn: psycopg.Connection,
    spec: SimilaritySpec,
    where: sql.Composable | None,
    limit: int,
    offset: int = 0,
    *,
    collections: Sequence[str] | None = None,
    settings: SimilaritySettings | None = None,
) -> list[Hit]:
    """Items most similar to the clause among those matching ``where`` (over ``items i``)."""
    return similar_with_plan(
        conn, spec, where, limit, offset, collections=collections, settings=settings
    )[0]


def similar_with_plan(
    conn: psycopg.Connection,
    spec: SimilaritySpec,
    where: sql.Composable | None,
    limit: int,
    offset: int = 0,
    *,
    collections: Sequence[str] | None = None,
    settings: SimilaritySettings | None = None,
) -> tuple[list[Hit], Plan]:
    """``similar``, also returning how the query ran."""
    settings = settings or SimilaritySettings()
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
    # Settings are SET LOCAL: in a transaction of our own they end with it; inside the
    # caller's transaction they are put back after the query.
    restore = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    started = time.perf_counter()
    with translated(), conn.transaction():
        hits, plan = _similar(conn, spec, where, limit, offset, collections, settings, restore)
    metrics.observe_similarity(time.perf_counter() - started, plan.strategy)
    return hits, plan


def _similar(
    conn: psycopg.Connection,
    spec: SimilaritySpec,
    where: sql.Composable | None,
    limit: int,
    offset: int,
    collections: Sequence[str] | None,
    settings: SimilaritySettings,
    restore: bool,
) -> tuple[list[Hit], Plan]:
    space = resolve_space(conn, spec, collections)
    q, op, indexable = query_vector(conn, spec, space, settings)
    vec = sql.SQL(space.vector_sql("e"))
    qv = sql.SQL("%s::{}").format(sql.SQL(space.sql_type))
    distance = sql.SQL("{vec} {op} {q}").format(vec=vec, op=sql.SQL(op), q=qv)
    conditions: list[sql.Composable] = [sql.SQL("e.space_id = {}").format(sql.Literal(space.id))]
    if collections:
        conditions.append(
            sql.SQL("e.collection_id = any({})").format(sql.Literal(list(collections)))
        )
    refs = spec.references
    if refs:
        conditions.append(
            sql.SQL("(e.collection_id, e.item_id) not in ({})").format(
                sql.SQL(", ").join(
                    sql.SQL("({}, {})").format(sql.Literal(r.collection), sql.Literal(r.id))
                    for r in refs
                )
            )
        )
    if where is not None:
        conditions.append(sql.SQL("({})").format(where))
    # Without a filter on items the join is not needed (every vector has its item): the
    # planner then sees one table, and the index scan no longer probes items per row.
    source = (
        "from embeddings e where {}"
        if where is None
        else "from embeddings e join items i on i.collection_id = e.collection_id"
        " and i.id = e.item_id where {}"
    )
    base = sql.SQL(source).format(sql.SQL(" and ").join(conditions))
    # A text literal, typed as the space's vector type: the server parses it once. (A
    # binary float8[] cast in SQL was re-evaluated per row.) map(repr) over a list of
    # Python floats formats 768 values in ~0.1 ms; repr per numpy scalar took ~1 ms.
    literal = "[" + ",".join(map(repr, q.astype(np.float64).tolist())) + "]"
    wanted = limit + offset

    exact_query = sql.SQL(
        "with c as materialized (select e.collection_id, e.item_id, {d} as d {base})"
        " select collection_id, item_id, d from c order by d, collection_id, item_id"
        " limit {n}"
    ).format(d=distance, base=base, n=sql.Literal(wanted))

    strategy: Literal["exact", "index"] = "exact"
    estimate = -1.0
    ef: int | None = None
    rows: list[tuple[Any, ...]] = []
    if not spec.exact and indexable:
        # Excluding the few example items is no filter: only a where clause or a
        # collection list can make the candidates a small fraction of the space. Both
        # estimates come from one EXPLAIN (a UNION ALL of the two counts' plans).
        compare = settings.exact_fraction > 0 and (where is not None or collections)
        queries = [sql.SQL("select 1 {}").format(base)]
        if compare:
            queries.append(
                sql.SQL("select 1 from embeddings e where e.space_id = {}").format(
                    sql.Literal(space.id)
                )
            )
        estimates = _estimates(conn, queries)
        estimate = estimates[0]
        if estimate >= settings.exact_threshold:
            strategy = "index"
            if compare and estimate < settings.exact_fraction * estimates[1]:
                strategy = "exact"
    if strategy == "index":
        ef = min(
            max(spec.ef_search or settings.ef_search_default, 2 * wanted, settings.ef_search_min),
            settings.ef_search_max,
        )
        inner = sql.SQL("select e.collection_id, e.item_id, {d} as d {base} order by {d} limit {n}")
        index_query: sql.Composed = inner.format(d=distance, base=base, n=sql.Literal(wanted))
        params: list[Any] = [literal, literal]
        if settings.iterative_scan == "relaxed_order":
            index_query = sql.SQL(
                "with c as materialized ({}) select collection_id, item_id, d from c order by d"
            ).format(index_query)
        with _local_settings(
            conn,
            {
                "hnsw.ef_search": str(ef),
                "hnsw.iterative_scan": settings.iterative_scan,
                "hnsw.max_scan_tuples": str(settings.max_scan_tuples),
                "work_mem": f"{settings.work_mem_mb}MB",
                "jit": "off",
                "max_parallel_workers_per_gather": "0",
            },
            restore=restore,
        ):
            rows = conn.execute(index_query, params).fetchall()
        if len(rows) < wanted:  # the scan budget ran out: fall back to an exact answer
            strategy = "exact"
    if strategy == "exact":
        with _local_settings(
            conn, {"jit": "off", "work_mem": f"{settings.work_mem_mb}MB"}, restore=restore
        ):
            rows = conn.execute(exact_query, [literal]).fetchall()
    hits = [Hit(c, i, float(d), _score(float(d), op, space.metric)) for c, i, d in rows[offset:]]
    return hits, Plan(space, strategy, estimate, ef)


def _score(distance: float, op: str, metric: str) -> float:
    if op == "<=>":
        return 1.0 - distance
    return -distance


__all__ = [
    "Hit",
    "ItemRef",
    "Plan",
    "SimilaritySettings",
    "SimilaritySpec",
    "parse_spec",
    "resolve_space",
    "similar",
    "similar_with_plan",
]
