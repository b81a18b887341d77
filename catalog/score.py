"""Scoring an area: a few-shot model applied, exactly and in the database, to every chip.

Similarity search returns the top k. Scoring answers the next question: *which chips of
this area look like my examples?* A request (``ScoreRequest``) names positive and negative
example items of one collection, a method (``linear`` or ``prototype``) and the usual
filters (``bbox`` / ``intersects``, ``datetime``, CQL2 ``filter``); the answer is every
matching chip whose score reaches ``threshold`` (or the ``top`` N), with its geometry.

The model is the similarity clause's (``catalog.similarity.query_vector``: the same
few-shot maths, one implementation): a query direction ``q`` and the pgvector operator to
compare with. Its negatives are the explicit ones (repeated so that together they weigh as
much as the background) plus a fixed sample of the collection's other chips (the
"background", ``background_sample`` chips in hash order): one negative alone only says
"far from this chip"; the background says what everything else looks like. Each chip's
raw similarity ``s`` is what a similarity search reports as ``similarity:score``
(``1 − cosine distance``, or the inner product). The **score** rescales it by the examples:
``score = (s − s_neg) / (s_pos − s_neg)``, where ``s_pos`` is the mean raw similarity of
the positive examples and ``s_neg`` that of the negatives and the background sample. So the
positives score 1 on average, a typical chip 0 or below, and the default threshold 0.5 is
halfway between them. Scores are comparable between runs of the same model only.

The scan is exact (no approximate index): one pass over the collection's rows in the
``embeddings`` table, with the spatial filter tested on the rows' own geometry (GiST) and
any other filter joined to ``items``. Rows stream out of a server-side cursor in batches,
so memory stays bounded whatever the area; ``top`` is a bounded top-N sort in PostgreSQL.

``ScoreModel.as_json()`` (labels, filters, method, query vector, levels, threshold) is the
record saved with every result (the GeoJSON's ``embcat:score`` member, the GeoParquet's
file metadata, the PNG's text chunk, the CLI's ``.model.json`` sidecar), so that a map can
be reproduced and explained.

This module fits the model and scans; the request and the model are
catalog.score_model's, the writers catalog.score_output's (their names are re-exported).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from embcat.catalog.errors import InvalidInput, translated
from embcat.catalog.filters import Filter
from embcat.catalog.item_shape import rfc3339
from embcat.catalog.score_model import (
    BATCH_ROWS,
    DEFAULT_THRESHOLD,
    FORMATS,
    MEDIA_TYPES,
    META_KEY,
    ScoreModel,
    ScoreRequest,
    model_from_json,
    parse_request,
)
from embcat.catalog.score_output import (
    geojson_chunks,
    parquet_chunks,
    png_area,
    png_text,
    render_png,
)
from embcat.catalog.settings import defaults
from embcat.catalog.similarity import _SPACES_SQL, _space_of
from embcat.catalog.similarity_fewshot import _fetch_vectors, _unit, linear_direction, query_vector
from embcat.catalog.similarity_session import _vector_adapters
from embcat.catalog.similarity_settings import SimilaritySettings
from embcat.catalog.similarity_spec import ItemRef, SimilaritySpec
from embcat.catalog.store import embedding_reads
from embcat.catalog.store.partitions import estimated_rows
from embcat.catalog.store.spaces import Space


def fit(
    conn: psycopg.Connection,
    collection_id: str,
    req: ScoreRequest,
    settings: SimilaritySettings | None = None,
) -> ScoreModel:
    """Validate the request against the catalogue and fit its model (nothing is written)."""
    settings = settings or defaults(SimilaritySettings)  # never the environment (callers pass it)
    positive, negative = req.refs(collection_id)
    foreign = sorted({r.collection for r in [*positive, *negative]} - {collection_id})
    if foreign:
        raise InvalidInput(
            f"examples must be items of collection {collection_id!r}; got {', '.join(foreign)}"
        )
    both = sorted({r.id for r in positive} & {r.id for r in negative})
    if both:
        raise InvalidInput(f"item(s) given as positive and negative: {', '.join(both)}")
    if len(positive) + len(negative) > settings.max_examples:
        raise InvalidInput(f"at most {settings.max_examples} examples are allowed")
    search = req.search(collection_id)
    # Compose the filters now: a bad filter is a 400 before anything streams.
    Filter.from_search(search)
    with translated():
        _vector_adapters(conn)
        space = _space_of([collection_id], conn.execute(_SPACES_SQL, ([collection_id],)).fetchall())
        background = _background_refs(
            conn,
            space,
            collection_id,
            settings.background_sample,
            {r.id for r in [*positive, *negative]},
        )
        if not background and not negative:
            raise InvalidInput("the collection holds no other chips to contrast the examples with")
        # The model's negatives: the explicit ones, repeated so that they weigh as much as
        # the whole background sample, plus the background (what "everything else" looks
        # like). One negative alone only says "far from this chip" (issue 14, D2).
        pos = _fetch_vectors(conn, space, positive)
        neg = _fetch_vectors(conn, space, [*negative, *background])
        if req.method == "linear":
            # The classifier's own direction (the decision value is what a threshold
            # cuts), trained by the similarity clause's one implementation: explicit
            # negatives and the background share the negatives' weight. (A similarity
            # search ranks by p̂ + ŵ instead: a top k must stay like the positives; a
            # threshold over the whole area needs the calibrated decision direction.)
            q, op = _linear_model(space, pos, neg[: len(negative)], neg[len(negative) :],
                                  settings)  # fmt: skip
        else:
            repeat = max(1, len(background) // len(negative)) if negative else 0
            contrast = [*(negative * repeat), *background]
            spec = SimilaritySpec(
                positive=positive, negative=contrast, method=req.method, exact=True
            )
            fit_settings = settings.model_copy(
                update={"max_examples": len(positive) + len(contrast)}
            )
            q, op, _indexable = query_vector(conn, spec, space, fit_settings)
            if op == "<->":  # an L2 space ranked by a prototype: compare by inner product
                op = "<#>"
        source = "examples+background" if negative else "background"
    model = ScoreModel(
        collection_id=collection_id,
        space=space,
        method=req.method,
        positive=tuple(positive),
        negative=tuple(negative),
        query=np.asarray(q, dtype=np.float64),
        operator=op,
        level_positive=0.0,
        level_negative=0.0,
        negative_source=source,  # type: ignore[arg-type]
        threshold=None if req.top is not None else _threshold(req),
        top=req.top,
        filters={
            k: v
            for k, v in {
                "bbox": req.bbox,
                "intersects": req.intersects,
                "datetime": req.datetime,
                "filter": req.filter,
                "filter-lang": search.filter_lang,
            }.items()
            if v is not None
        },
        created=rfc3339(datetime.now(UTC)),
    )
    # The levels with the stored (rounded) vectors, the values the database compares.
    p_level = float(model.raw(pos).mean())
    n_level = float(model.raw(neg).mean()) if len(neg) else 0.0
    if not p_level > n_level:
        raise InvalidInput(
            "the positive examples are not more similar to the model than the negatives;"
            " choose examples that differ (or more of them)"
        )
    return replace(model, level_positive=p_level, level_negative=n_level)


def _linear_model(
    space: Space,
    positives: np.ndarray,
    negatives: np.ndarray,
    background: np.ndarray,
    settings: SimilaritySettings,
) -> tuple[np.ndarray, str]:
    """The unit direction ``w`` of the linear few-shot classifier and the operator that
    compares chips with it (cosine spaces: cosine, on unit features; others: inner product)."""
    cosine = space.metric == "cosine"
    if cosine:
        positives, background = _unit(positives), _unit(background)
        negatives = _unit(negatives) if len(negatives) else negatives
    w = linear_direction(
        positives, negatives, background=background,
        iterations=settings.linear_iterations, l2=settings.linear_l2,
    )  # fmt: skip
    norm = float(np.linalg.norm(w))
    if not np.isfinite(norm) or norm == 0:
        raise InvalidInput("the examples give the classifier no direction to rank by")
    return w / norm, "<=>" if cosine else "<#>"


def _background_refs(
    conn: psycopg.Connection,
    space: Space,
    collection_id: str,
    size: int,
    exclude: set[str],
) -> list[ItemRef]:
    """A fixed pseudo-random sample of the collection's chips, examples left out.

    A block sample (``tablesample system ... repeatable``, about 20x the size wanted) put
    in hash order: a 1M-row collection is not sorted whole. Too few rows (a collection that
    is a small part of the table): the collection's rows themselves in hash order.
    """
    total = estimated_rows(conn, space.id)
    want = size + len(exclude)
    percent = 100.0 if total <= 0 else min(100.0, 100.0 * 20 * want / total)
    ids = embedding_reads.item_ids_sample(conn, collection_id, space.id, want, percent)
    if len(ids) < want and percent < 100.0:
        ids = embedding_reads.item_ids_sample(conn, collection_id, space.id, want, None)
    refs = [ItemRef(collection=collection_id, id=i) for i in ids if i not in exclude]
    return refs[:size]


def _threshold(req: ScoreRequest) -> float:
    return DEFAULT_THRESHOLD if req.threshold is None else float(req.threshold)


def score_query(
    conn: psycopg.Connection, model: ScoreModel, req: ScoreRequest
) -> tuple[sql.SQL, dict[str, Any]]:
    """SELECT item_id, geometry (WKB), score over the filtered chips, cut and ordered."""
    space = model.space
    vec = sql.SQL(space.vector_sql("e"))
    qv = sql.SQL("{}::{}").format(sql.Literal("__q__"), sql.SQL(space.sql_type))
    if model.operator == "<=>":
        raw = sql.SQL("(1 - ({} <=> {}))").format(vec, qv)
    else:
        raw = sql.SQL("(-({} <#> {}))").format(vec, qv)
    score = sql.SQL("(({raw} - {neg}) / {spread})").format(
        raw=raw,
        neg=sql.Literal(model.level_negative),
        spread=sql.Literal(model.spread),
    )
    search = req.search(model.collection_id)
    # The collection (the model's own) and the rows' own columns on embeddings e; the
    # rest of the filter joins items (catalog.filters).
    rows = replace(Filter.from_search(search), collections=()).for_embeddings()
    source = embedding_reads.rows_source(space.id, rows, collection_id=model.collection_id)
    inner = sql.SQL("select e.item_id, e.geometry, {score} as score {source}").format(
        score=score, source=source
    )
    if model.top is not None:
        query = sql.SQL(
            "select item_id, ST_AsBinary(geometry), score from ({inner}) s"
            " order by score desc, item_id limit {n}"
        ).format(inner=inner, n=sql.Literal(model.top))
    else:
        # Flattened by the planner: the cut is a filter of the (parallel) scan, the score
        # computed again only for the rows that pass it. (An ``offset 0`` fence would
        # compute it once, but keeps the scan serial: 4.4 s against 1.4 s at 1M rows.)
        query = sql.SQL(
            "select item_id, ST_AsBinary(geometry), score from ({inner}) s where score >= {t}"
        ).format(inner=inner, t=sql.Literal(model.threshold))
    # Literals of the filters may hold '%' (a CQL2 like pattern), which psycopg would read
    # as a placeholder next to the query vector's: render them, escape, then place q.
    text = query.as_string(conn).replace("%", "%%").replace("'__q__'", "%(q)s")
    return sql.SQL(text), {"q": _param(model)}


def _param(model: ScoreModel) -> Any:
    from pgvector import HalfVector, Vector

    q = model.query.astype(np.float32)
    return HalfVector(q) if model.space.storage == "halfvec" else Vector(q)


# Session settings of a scoring scan: a long exact scan, so parallel workers help (unlike
# the short similarity queries), and JIT compiles the per-row expression once.
SCAN_SETTINGS = {"max_parallel_workers_per_gather": "2", "jit": "off", "work_mem": "64MB"}


def rows(
    conn: psycopg.Connection,
    model: ScoreModel,
    req: ScoreRequest,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[list[tuple[str, bytes, float]]]:
    """Batches of (item id, WKB geometry, score), streamed as the server sends them.

    ``cursor.stream`` (libpq's chunked / single-row mode), not a server-side cursor:
    PostgreSQL never plans a parallel scan for a cursor (DECLARE), so the threshold scan
    ran on one core (1M chips: 1.2-1.3 s against 0.8 s with two workers, issue 20); the
    client still holds one batch at a time. Runs in a transaction block (a savepoint
    inside the caller's transaction) for the scan settings.
    """
    query, params = score_query(conn, model, req)
    with translated(), conn.transaction():
        for name, value in SCAN_SETTINGS.items():
            conn.execute("select set_config(%s, %s, true)", (name, value))
        with conn.cursor() as cur:
            batch: list[tuple[str, bytes, float]] = []
            for r in cur.stream(query, params, size=min(batch_rows, 1000)):
                batch.append((r[0], bytes(r[1]), float(r[2])))
                if len(batch) >= batch_rows:
                    yield batch
                    batch = []
            if batch:
                yield batch


def stream(
    conn: psycopg.Connection,
    model: ScoreModel,
    req: ScoreRequest,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The result in ``req.format``, as chunks of bytes."""

    def counted() -> Iterator[list[tuple[str, bytes, float]]]:
        for batch in rows(conn, model, req):
            if on_batch is not None:
                on_batch(len(batch))
            yield batch

    if req.format == "geojson":
        yield from geojson_chunks(model, counted())
    elif req.format == "parquet":
        yield from parquet_chunks(model, counted())
    else:
        area = png_area(conn, model, req)
        yield render_png(model, counted(), area, req.width, req.height)


def score_ids(
    conn: psycopg.Connection,
    collection_id: str,
    req: ScoreRequest,
    settings: SimilaritySettings | None = None,
) -> tuple[ScoreModel, dict[str, float]]:
    """The model and {item id: score} of the chips kept (small areas, tests, notebooks)."""
    model = fit(conn, collection_id, req, settings)
    out: dict[str, float] = {}
    for batch in rows(conn, model, req):
        out.update((iid, s) for iid, _, s in batch)
    return model, out


__all__ = [
    "DEFAULT_THRESHOLD",
    "FORMATS",
    "MEDIA_TYPES",
    "META_KEY",
    "ScoreModel",
    "ScoreRequest",
    "fit",
    "model_from_json",
    "parse_request",
    "png_text",
    "rows",
    "score_ids",
    "stream",
]
