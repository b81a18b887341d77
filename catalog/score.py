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
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from embcat.catalog.errors import InvalidInput, translated
from embcat.catalog.filters import Filter
from embcat.catalog.search import SearchQuery
from embcat.catalog.similarity import _SPACES_SQL, _space_of
from embcat.catalog.similarity_fewshot import _fetch_vectors, _unit, linear_direction, query_vector
from embcat.catalog.similarity_session import _vector_adapters
from embcat.catalog.similarity_settings import SimilaritySettings
from embcat.catalog.similarity_spec import ItemRef, SimilaritySpec
from embcat.catalog.spaces import Space, space_table
from embcat.encoders.thumbnails import png_bytes

MODEL_TYPE = "embcat:score-model"
MODEL_VERSION = 1
META_KEY = "embcat:score"
DEFAULT_THRESHOLD = 0.5
MAX_TOP = 1_000_000
BATCH_ROWS = 5_000
MAX_PNG_SIDE = 2048
Format = Literal["geojson", "parquet", "png"]
FORMATS: tuple[str, ...] = ("geojson", "parquet", "png")
MEDIA_TYPES = {
    "geojson": "application/geo+json",
    "parquet": "application/vnd.apache.parquet",
    "png": "image/png",
}


class ScoreRequest(BaseModel):
    """What to score: examples, method, cut-off and the area (filters) of one collection."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "positive": ["tile-0001", "tile-0042"],
                    "negative": ["tile-0007"],
                    "method": "linear",
                    "bbox": [5.0, 45.0, 8.0, 48.0],
                    "threshold": 0.5,
                    "format": "geojson",
                }
            ]
        },
    )

    positive: list[str | ItemRef] = Field(
        min_length=1, description="Positive examples: item ids of the collection (or refs)."
    )
    negative: list[str | ItemRef] = Field(default_factory=list, description="Negative examples.")
    method: Literal["linear", "prototype"] = Field(
        "linear", description="Few-shot model (as in the similarity clause)."
    )
    threshold: float | None = Field(
        default=None,
        description="Keep chips scoring at least this (default 0.5 unless 'top' is given).",
    )
    top: int | None = Field(
        default=None, ge=1, le=MAX_TOP, description="Keep the N best chips instead."
    )
    bbox: list[float] | None = Field(default=None, description="minx, miny, maxx, maxy.")
    intersects: dict[str, Any] | None = Field(default=None, description="GeoJSON geometry.")
    datetime: str | None = Field(default=None, description="RFC 3339 instant or interval.")
    filter: dict[str, Any] | str | None = Field(default=None, description="CQL2 filter.")
    filter_lang: Literal["cql2-json", "cql2-text"] | None = Field(default=None, alias="filter-lang")
    format: Format = Field("geojson", description="geojson, parquet or png (a heat map).")
    width: int | None = Field(default=None, ge=1, le=MAX_PNG_SIDE, description="PNG width.")
    height: int | None = Field(default=None, ge=1, le=MAX_PNG_SIDE, description="PNG height.")

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) not in (4, 6):
            raise ValueError("bbox must have 4 (or 6) numbers")
        return value

    @model_validator(mode="after")
    def _one_cut(self) -> ScoreRequest:
        if self.threshold is not None and self.top is not None:
            raise ValueError("give 'threshold' or 'top', not both")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError("threshold must be a finite number")
        if self.bbox is not None and self.intersects is not None:
            raise ValueError("bbox and intersects are mutually exclusive")
        return self

    def refs(self, collection_id: str) -> tuple[list[ItemRef], list[ItemRef]]:
        def ref(r: str | ItemRef) -> ItemRef:
            return ItemRef(collection=collection_id, id=r) if isinstance(r, str) else r

        return [ref(r) for r in self.positive], [ref(r) for r in self.negative]

    def search(self, collection_id: str) -> SearchQuery:
        lang = self.filter_lang
        if self.filter is not None and lang is None:
            lang = "cql2-json" if isinstance(self.filter, dict) else "cql2-text"
        return SearchQuery(
            collections=[collection_id],
            bbox=self.bbox,
            intersects=self.intersects,
            datetime=self.datetime,
            filter=self.filter,
            filter_lang=lang,
        )


def parse_request(body: Any) -> ScoreRequest:
    """Validate a request (dict or model), raising InvalidInput with pydantic's message."""
    if isinstance(body, ScoreRequest):
        return body
    from pydantic import ValidationError

    try:
        return ScoreRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput.from_validation("invalid score request", exc) from exc


@dataclass(frozen=True)
class ScoreModel:
    """A fitted few-shot model and the request it came from (what is saved with a result)."""

    collection_id: str
    space: Space
    method: str
    positive: tuple[ItemRef, ...]
    negative: tuple[ItemRef, ...]
    query: np.ndarray  # the direction q of the similarity clause
    operator: str  # pgvector operator comparing a chip with q
    level_positive: float  # mean raw similarity of the positives
    level_negative: float  # ... of the negatives (or the background sample)
    negative_source: Literal["examples+background", "background"]
    threshold: float | None
    top: int | None
    filters: dict[str, Any]
    created: str

    def raw(self, vectors: np.ndarray) -> np.ndarray:
        """Raw similarity of each row of ``vectors`` (numpy; what the SQL computes)."""
        v = np.asarray(vectors, dtype=np.float64)
        if self.operator == "<=>":
            return (_unit(v) @ _unit(self.query[None])[0]).astype(np.float64)
        return v @ self.query

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Scores of ``vectors`` computed in numpy (the reference for tests and benchmarks)."""
        return (self.raw(vectors) - self.level_negative) / self.spread

    @property
    def spread(self) -> float:
        return self.level_positive - self.level_negative

    def as_json(self) -> dict[str, Any]:
        s = self.space
        return {
            "type": MODEL_TYPE,
            "version": MODEL_VERSION,
            "collection": self.collection_id,
            "space": {
                "encoder_name": s.encoder_name,
                "encoder_version": s.encoder_version,
                "dimensions": s.dimensions,
                "storage": s.storage,
                "metric": s.metric,
            },
            "method": self.method,
            "positive": [r.model_dump() for r in self.positive],
            "negative": [r.model_dump() for r in self.negative],
            "negative_source": self.negative_source,
            "filters": self.filters,
            "threshold": self.threshold,
            "top": self.top,
            "score": "(s - level_negative) / (level_positive - level_negative)",
            "raw_similarity": "1 - cosine distance" if self.operator == "<=>" else "inner product",
            "levels": {"positive": self.level_positive, "negative": self.level_negative},
            "operator": self.operator,
            "query_vector": [float(v) for v in self.query],
            "created": self.created,
        }


def fit(
    conn: psycopg.Connection,
    collection_id: str,
    req: ScoreRequest,
    settings: SimilaritySettings | None = None,
) -> ScoreModel:
    """Validate the request against the catalogue and fit its model (nothing is written)."""
    settings = settings or SimilaritySettings()
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
        created=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
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
    row = conn.execute(
        "select greatest(reltuples, 0) from pg_class where oid = %s::regclass",
        (space_table(conn, space.id),),
    ).fetchone()
    total = float(row[0]) if row else 0.0
    want = size + len(exclude)
    percent = 100.0 if total <= 0 else min(100.0, 100.0 * 20 * want / total)
    rows = conn.execute(
        "select item_id from embeddings tablesample system (%s) repeatable (7)"
        " where collection_id = %s and space_id = %s order by md5(item_id) limit %s",
        (percent, collection_id, space.id, want),
    ).fetchall()
    if len(rows) < want and percent < 100.0:
        rows = conn.execute(
            "select item_id from embeddings where collection_id = %s and space_id = %s"
            " order by md5(item_id) limit %s",
            (collection_id, space.id, want),
        ).fetchall()
    refs = [ItemRef(collection=collection_id, id=r[0]) for r in rows if r[0] not in exclude]
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
    conditions: list[sql.Composable] = [
        sql.SQL("e.space_id = {}").format(sql.Literal(space.id)),
        sql.SQL("e.collection_id = {}").format(sql.Literal(model.collection_id)),
        *rows.conditions,
    ]
    if rows.rest is not None:
        conditions.append(sql.SQL("({})").format(rows.rest))
    source = (
        "embeddings e"
        if rows.rest is None
        else "embeddings e join items i on i.collection_id = e.collection_id and i.id = e.item_id"
    )
    inner = sql.SQL(
        "select e.item_id, e.geometry, {score} as score from {source} where {cond}"
    ).format(score=score, source=sql.SQL(source), cond=sql.SQL(" and ").join(conditions))
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


# --------------------------------------------------------------------------- writers


def geojson_chunks(
    model: ScoreModel, batches: Iterator[list[tuple[str, bytes, float]]]
) -> Iterator[bytes]:
    """A GeoJSON FeatureCollection, streamed; the model is its ``embcat:score`` member."""
    from shapely import from_wkb, to_geojson

    head = {"type": "FeatureCollection", META_KEY: model.as_json()}
    yield json.dumps(head)[:-1].encode() + b', "features": ['
    first = True
    for batch in batches:
        geoms = to_geojson(from_wkb([g for _, g, _ in batch]))
        parts = []
        for (iid, _, s), g in zip(batch, geoms, strict=True):
            feature = (
                '{"type": "Feature", "id": ' + json.dumps(iid) + ', "geometry": ' + g
                + ', "properties": {"collection": ' + json.dumps(model.collection_id)
                + ', "score": ' + repr(s) + "}}"
            )  # fmt: skip
            parts.append(feature)
        if parts:
            yield (("" if first else ",") + ",".join(parts)).encode()
            first = False
    yield b"]}"


def parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("collection", pa.string(), nullable=False),
            pa.field("score", pa.float64(), nullable=False),
            pa.field("geometry", pa.binary(), nullable=False),
        ]
    )


def parquet_chunks(
    model: ScoreModel, batches: Iterator[list[tuple[str, bytes, float]]]
) -> Iterator[bytes]:
    """GeoParquet 1.0 (WKB geometry, EPSG:4326), one row group per batch, streamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embcat.catalog.export import _Sink

    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": []}},
    }
    schema = parquet_schema().with_metadata(
        {b"geo": json.dumps(geo).encode(), META_KEY.encode(): json.dumps(model.as_json()).encode()}
    )
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    for batch in batches:
        table = pa.Table.from_arrays(
            [
                pa.array([r[0] for r in batch], pa.string()),
                pa.array([model.collection_id] * len(batch), pa.string()),
                pa.array([r[2] for r in batch], pa.float64()),
                pa.array([r[1] for r in batch], pa.binary()),
            ],
            schema=schema,
        )
        writer.write_table(table)
        yield sink.take()
    writer.close()
    yield sink.take()


def collection_bbox(
    conn: psycopg.Connection, model: ScoreModel
) -> tuple[float, float, float, float] | None:
    """The extent of the collection's chips (the PNG's area when the request has no bbox)."""
    with translated():
        row = conn.execute(
            "select ST_XMin(x), ST_YMin(x), ST_XMax(x), ST_YMax(x) from"
            " (select ST_Extent(geometry)::geometry x from embeddings"
            "  where collection_id = %s and space_id = %s) s",
            (model.collection_id, model.space.id),
        ).fetchone()
    if row is None or row[0] is None:
        return None
    return float(row[0]), float(row[1]), float(row[2]), float(row[3])


def png_area(
    conn: psycopg.Connection, model: ScoreModel, req: ScoreRequest
) -> tuple[float, float, float, float]:
    if req.bbox is not None:
        b = req.bbox
        return (b[0], b[1], b[2], b[3]) if len(b) == 4 else (b[0], b[1], b[3], b[4])
    if req.intersects is not None:
        from shapely.geometry import shape

        x0, y0, x1, y1 = shape(req.intersects).bounds
        return float(x0), float(y0), float(x1), float(y1)
    found = collection_bbox(conn, model)
    if found is None:
        raise InvalidInput(f"collection {model.collection_id!r} has no chips to map")
    return found


# A perceptual ramp (dark blue -> teal -> yellow), eight stops: score 0..1 after the cut.
_RAMP = np.array(
    [
        [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142],
        [38, 130, 142], [31, 158, 137], [109, 205, 89], [253, 231, 37],
    ],
    dtype=np.float64,
)  # fmt: skip


def colour(values: np.ndarray) -> np.ndarray:
    """RGB (uint8) of values in [0, 1] along the ramp."""
    t = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    f = (t - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - f) + _RAMP[hi] * f).astype(np.uint8)


def render_png(
    model: ScoreModel,
    batches: Iterator[list[tuple[str, bytes, float]]],
    bbox: tuple[float, float, float, float],
    width: int | None = None,
    height: int | None = None,
) -> bytes:
    """A heat map of the scores over ``bbox``: RGBA PNG, transparent where no chip passed.

    Colour runs from the cut (threshold, or the lowest score kept) at dark blue to score 1
    and above at yellow; where chips overlap a pixel the highest score shows. The model is
    in a ``tEXt`` chunk under the key ``embcat:score``. Memory: the raster (at most
    2048 x 2048) and one batch.
    """
    from affine import Affine
    from rasterio import features as rio_features
    from shapely import from_wkb

    from embcat.catalog.preview import png_size

    w, h = png_size(bbox, width, height)
    west, south, east, north = bbox
    if not (east > west and north > south):
        raise InvalidInput("the area to map is empty (bbox with no width or height)")
    transform = Affine((east - west) / w, 0.0, west, 0.0, -(north - south) / h, north)
    best = np.full((h, w), -np.inf, dtype=np.float64)
    for batch in batches:
        shapes = list(
            zip(from_wkb([g for _, g, _ in batch]), [s for _, _, s in batch], strict=True)
        )
        # Burn in order of score so that the highest wins where footprints share a pixel.
        shapes.sort(key=lambda t: t[1])
        layer = rio_features.rasterize(
            shapes,
            out_shape=(h, w),
            transform=transform,
            fill=np.nan,
            dtype="float64",
            all_touched=True,
        )
        np.fmax(best, layer, out=best)
    covered = np.isfinite(best)
    low = (
        model.threshold
        if model.threshold is not None
        else (float(best[covered].min()) if covered.any() else 0.0)
    )
    span = max(1.0 - low, 1e-9)
    rgb = colour((np.where(covered, best, low) - low) / span)
    image = np.zeros((h, w, 4), dtype=np.uint8)
    image[..., :3] = np.where(covered[..., None], rgb, 0)
    image[..., 3] = np.where(covered, 255, 0)
    return png_bytes(image, {META_KEY: json.dumps(model.as_json())})


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG (to read the model back from a heat map)."""
    out: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return out


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


def model_from_json(text: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """A saved model record, checked for its type (as stored with a result)."""
    value = json.loads(text) if isinstance(text, str | bytes) else text
    if not isinstance(value, dict) or value.get("type") != MODEL_TYPE:
        raise InvalidInput(f"not a {MODEL_TYPE} record")
    return value


def describe(refs: Sequence[ItemRef]) -> list[str]:
    return [r.id for r in refs]


__all__ = [
    "DEFAULT_THRESHOLD",
    "FORMATS",
    "MEDIA_TYPES",
    "META_KEY",
    "ScoreModel",
    "ScoreRequest",
    "fit",
    "parse_request",
    "png_text",
    "rows",
    "score_ids",
    "stream",
]
