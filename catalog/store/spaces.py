"""Embedding spaces: registration, index kinds, and the SQL to query a space's index.

The space's storage lives in ``catalog.partitions`` (its partition of ``embeddings``, the
merge locks) and its index build in ``catalog.space_index``.

Storage (migration 0021): ``embeddings`` is partitioned by space (LIST on ``space_id``):
a space's rows live in ``embeddings_space_<id>`` (``partition_name``), created with
``ensure_partition`` when the space is first published, and its similarity index is a
plain index on that partition. Queries read ``embeddings`` with ``space_id = <id>`` (a
literal), which the planner prunes to the one partition. Rows of a space without a
partition (a mirror's first pages) sit in ``embeddings_default`` until ``ensure_index``
moves them. A query must use the same cast and the same operator class as the space's
index to hit it; ``Space.vector_sql``, ``Space.code_sql`` and ``Space.distance_op`` are
the one place that spells them out.

Index kinds (``Space.index_kind``, recorded in ``embedding_spaces``, migration 0014):

- ``hnsw-halfvec``: HNSW over the stored vector (about 2 kB per 768-d vector at m 16).
- ``ivfflat-bit``: IVFFlat (``lists`` = sqrt(N)) over the sign bits of the centred vector,
  ``binary_quantize(e - center)::bit(d)`` (d/8 bytes a vector); the query over-fetches
  candidates by Hamming distance and re-ranks them by the exact distance on the stored
  vector (catalog.similarity). ``center`` is the space's mean at build time: sign bits
  carry information only about zero (ReLU features such as MOSAIKS are all positive).
- ``hnsw-bit``: HNSW over the same bits, re-ranked the same way.

Switching a space's kind (``ensure_index(..., kind=...)``, ``embcat index build --kind``)
builds the new index beside the old one, then records the new kind and drops the old
index in the same transaction: readers always find an index for the kind they read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg.types.json import Jsonb
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from embcat.catalog.errors import Conflict, InvalidInput, NotFound
from embcat.catalog.settings import defaults
from embcat.catalog.store import collections as store_collections
from embcat.encoders.manifest import options_sha256

log = logging.getLogger(__name__)

Metric = Literal["cosine", "l2", "inner_product"]
Storage = Literal["halfvec", "vector"]
IndexKind = Literal["hnsw-halfvec", "ivfflat-bit", "hnsw-bit"]
INDEX_KINDS: tuple[str, ...] = ("hnsw-halfvec", "ivfflat-bit", "hnsw-bit")
BIT_KINDS = frozenset({"ivfflat-bit", "hnsw-bit"})
BIT_MAX_DIMS = 64000  # pgvector's limit for bit indexes
# From this many dimensions a new space gets a binary index by default ("auto"): a code of
# fewer bits has too few distinct Hamming distances to pick candidates (at 32 bits, top-300
# of 3,000 missed planted neighbours), at 768 it out-ranked HNSW (benchmarks/README.md).
AUTO_BIT_MIN_DIMS = 256
# Index names per kind (the HNSW-halfvec name is the one the earlier migrations made).
_INDEX_PREFIX = {"hnsw-halfvec": "hnsw", "ivfflat-bit": "ivfbit", "hnsw-bit": "hnswbit"}

# pgvector index limits per type (HNSW): vector <= 2000 dims, halfvec <= 4000.
INDEX_MAX_DIMS: dict[str, int] = {"vector": 2000, "halfvec": 4000}
_OPS = {"cosine": "cosine_ops", "l2": "l2_ops", "inner_product": "ip_ops"}
_OPERATORS = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}


class IndexSettings(BaseSettings):
    """The HNSW graph built for each space (environment prefix ``EMBCAT_HNSW_``).

    ef_construction 128 rather than pgvector's 64: on 1M x 768 encoder-like vectors the
    default graph gave recall@10 between 0.92 and 0.98 from one (parallel, so not
    deterministic) build to the next at ef_search 100; with 128, 0.988-0.998 at ef_search
    100 and 0.984-0.996 at 60, for about 1.4x the build time (benchmarks/README.md,
    Similarity).
    """

    model_config = SettingsConfigDict(env_prefix="EMBCAT_HNSW_", extra="ignore")

    kind: IndexKind | Literal["auto"] = Field(
        default="auto",
        description="Index kind of newly registered spaces; auto: ivfflat-bit from"
        f" {AUTO_BIT_MIN_DIMS} dimensions, hnsw-halfvec below, and hnsw-halfvec where binary"
        " codes do not rank the data (judged at the first build; benchmarks/README.md, Scale).",
    )
    m: int = Field(default=16, ge=2, le=100, description="HNSW m: links per graph node.")
    ef_construction: int = Field(
        default=128, ge=4, le=1000, description="HNSW ef_construction: build candidate list."
    )

    @model_validator(mode="after")
    def _pgvector_rule(self) -> IndexSettings:
        if self.ef_construction < 2 * self.m:
            raise ValueError("ef_construction must be at least twice m (pgvector's rule)")
        return self


@dataclass(frozen=True)
class Space:
    id: int
    encoder_name: str
    encoder_version: str
    dimensions: int
    storage: Storage = "halfvec"
    metric: Metric = "cosine"
    normalized: bool = False
    mlm: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    index_kind: IndexKind = "hnsw-halfvec"
    # the mean subtracted before binary quantisation (binary kinds; None until built)
    center: tuple[float, ...] | None = field(default=None, compare=False, hash=False)
    # sha256 of the canonical encoder options (encoders.manifest.space_options); None for
    # a space registered before migration 0009 that no publish has matched since.
    options_sha256: str | None = None
    options: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    # the index's build record (kind-specific: lists or m/ef_construction, rows, build_s)
    index_params: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def column(self) -> str:
        return "embedding" if self.storage == "halfvec" else "embedding_f32"

    @property
    def sql_type(self) -> str:
        return f"{self.storage}({self.dimensions})"

    def vector_sql(self, alias: str = "e") -> str:
        """The cast expression the space's index is built on, e.g. ``e.embedding::halfvec(768)``."""
        return f"({alias}.{self.column}::{self.sql_type})"

    def identity(self) -> dict[str, Any]:
        """What makes two collections' vectors comparable, as the exchange names it (the
        export's ``embcat`` metadata, ``GET /collections/{id}/space``)."""
        return {
            "encoder_name": self.encoder_name,
            "encoder_version": self.encoder_version,
            "dimensions": self.dimensions,
            "storage": self.storage,
            "metric": self.metric,
            "normalized": self.normalized,
        }

    @property
    def distance_op(self) -> str:
        """pgvector operator: ``<=>`` cosine, ``<->`` L2, ``<#>`` negative inner product."""
        return _OPERATORS[self.metric]

    @property
    def opclass(self) -> str:
        return f"{self.storage}_{_OPS[self.metric]}"

    @property
    def index_name(self) -> str:
        return index_name(self.id, self.index_kind)

    @property
    def binary(self) -> bool:
        """Whether the space's kind is a binary-code index with exact re-ranking."""
        return self.index_kind in BIT_KINDS

    @property
    def indexable(self) -> bool:
        """Whether the space's kind can index vectors of its dimensions."""
        return kind_indexable(self.index_kind, self.storage, self.dimensions)

    def center_sql(self) -> str:
        """The centre as a literal of the space's type (the constant of the index)."""
        if self.center is None:
            raise ValueError(f"space {self.id} has no centre (no binary index was built)")
        values = ",".join(repr(float(v)) for v in self.center)
        return f"'[{values}]'::{self.center_type}"

    def coded_sql(self, alias: str = "e") -> str:
        """The vector the binary code is taken of, in float32 (pgvector's halfvec
        arithmetic converts every value in software: subtracting the centre in halfvec
        cost 50 us a 768-d row here, in vector 10 us). Cosine spaces: unit length (the
        metric ignores the norm, so the code must too) unless the space is normalised."""
        v = self.vector_sql(alias)
        if self.storage == "halfvec":
            v = f"({v}::vector({self.dimensions}))"
        if self.metric == "cosine" and not self.normalized:
            return f"l2_normalize{v}"
        return v

    @property
    def center_type(self) -> str:
        return f"vector({self.dimensions})"

    def code_sql(self, alias: str = "e") -> str:
        """The binary code the binary kinds index: sign bits of the centred vector."""
        return (
            f"(binary_quantize({self.coded_sql(alias)} - {self.center_sql()})"
            f"::bit({self.dimensions}))"
        )

    def code_of(self, q: Any, *, direction: bool = False) -> str:
        """The binary code of a query vector (``'0101...'``, as ``binary_quantize``).

        A point of the space is centred like the stored vectors (unit length first in
        cosine spaces). A ``direction`` (the linear method's weights, ranking by ``w·x``)
        is not: ``w·x = w·(x - c) + w·c``, so its own signs are the code nearest to the
        centred vectors it scores highest.
        """
        if self.center is None:
            raise ValueError(f"space {self.id} has no centre (no binary index was built)")
        v = np.asarray(q, dtype=np.float64)
        if not direction:
            if self.metric == "cosine" and not self.normalized:
                norm = float(np.linalg.norm(v))
                v = v / norm if norm > 0 else v
            v = v - np.asarray(self.center, dtype=np.float64)
        return "".join(np.where(v > 0, "1", "0"))


def default_kind(dimensions: int, configured: str | None = None) -> IndexKind:
    """The kind of a new space: ``configured`` (IndexSettings.kind; default: the code's),
    "auto" by dimensions."""
    configured = configured or defaults(IndexSettings).kind
    if configured == "auto":
        return "ivfflat-bit" if dimensions >= AUTO_BIT_MIN_DIMS else "hnsw-halfvec"
    return configured  # type: ignore[return-value]


def index_name(space_id: int, kind: str) -> str:
    return f"embeddings_{_INDEX_PREFIX[kind]}_space_{int(space_id)}"


def kind_indexable(kind: str, storage: str, dimensions: int) -> bool:
    if kind in BIT_KINDS:
        return dimensions <= BIT_MAX_DIMS
    return dimensions <= INDEX_MAX_DIMS[storage]


_SPACE_COLUMNS = (
    "id", "encoder_name", "encoder_version", "dimensions", "storage", "metric", "normalized",
    "mlm", "index_kind", "index_center", "options_sha256", "options", "index_params",
)  # fmt: skip


def space_columns(alias: str | None = None) -> str:
    """The SELECT list of ``embedding_spaces`` that :func:`space_from_row` reads (columns
    of the table ``alias`` when given)."""
    return ", ".join(f"{alias}.{c}" if alias else c for c in _SPACE_COLUMNS)


_COLUMNS = space_columns()

# The space of each of some collections: the collection's id, then ``space_columns``
# (all NULL for a collection without vectors); collections not found give no row.
COLLECTION_SPACES_SQL = (
    f"select c.id, {space_columns('s')} from collections c"
    " left join embedding_spaces s on s.id = c.space_id where c.id = any(%s)"
)


def space_from_row(row: Sequence[Any]) -> Space:
    """The one place a :class:`Space` is made of a database row (``space_columns``)."""
    (
        sid,
        name,
        version,
        dims,
        storage,
        metric,
        normalized,
        mlm,
        kind,
        center,
        sha,
        options,
        params,
    ) = row
    return Space(
        sid, name, version, dims, storage, metric, normalized, mlm or {}, kind,
        tuple(center) if center is not None else None, sha, options, params,
    )  # fmt: skip


def get_space(conn: psycopg.Connection, space_id: int) -> Space:
    row = conn.execute(
        f"select {_COLUMNS} from embedding_spaces where id = %s", (space_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"embedding space {space_id} does not exist")
    return space_from_row(row)


def collection_space(conn: psycopg.Connection, collection_id: str) -> Space | None:
    """The collection's space (None: the collection has no embeddings yet)."""
    found, space_id = store_collections.find_space_id(conn, collection_id)
    if not found:
        raise NotFound(f"collection {collection_id!r} does not exist")
    return get_space(conn, space_id) if space_id is not None else None


def list_spaces(conn: psycopg.Connection) -> list[Space]:
    rows = conn.execute(f"select {_COLUMNS} from embedding_spaces order by id").fetchall()
    return [space_from_row(r) for r in rows]


def get_or_create_space(
    conn: psycopg.Connection,
    *,
    encoder_name: str,
    encoder_version: str,
    dimensions: int,
    storage: Storage = "halfvec",
    metric: Metric = "cosine",
    normalized: bool = False,
    mlm: dict[str, Any] | None = None,
    index_kind: IndexKind | None = None,
    options: dict[str, Any] | None = None,
    index: IndexSettings | None = None,
) -> Space:
    """Register a space (idempotent on its identity) inside the caller's transaction.

    ``index_kind`` (default: ``default_kind(dimensions, index.kind)``) applies to a new space
    only; an existing space keeps its kind (``ensure_index(..., kind=...)`` switches it). A
    binary default of "auto" is recorded as such (``index_params.auto``) and judged on the
    data at the first build of enough rows.
    ``options``: the canonical encoder options (encoders.manifest.space_options); their
    hash is part of the identity, so the same encoder with another seed, band list or
    checkpoint is another space. Without them (a mirror of a catalogue that records none)
    the space is one of unknown options.
    """
    # "auto" registers a binary default still to be judged on the data (the space's first
    # index build of enough rows: store.space_index.ensure_index)
    judged = index_kind is None and (index or defaults(IndexSettings)).kind == "auto"
    if index_kind is None:
        index_kind = default_kind(dimensions, index.kind if index is not None else None)
    params = {"auto": {"decided": False}} if judged and index_kind in BIT_KINDS else {}
    if index_kind not in INDEX_KINDS:
        raise InvalidInput(f"unknown index kind {index_kind!r}; use one of {list(INDEX_KINDS)}")
    if storage not in INDEX_MAX_DIMS:
        raise InvalidInput(f"unknown storage {storage!r}; use 'halfvec' or 'vector'")
    if metric not in _OPS:
        raise InvalidInput(f"unknown metric {metric!r}; use one of {sorted(_OPS)}")
    if not 0 < dimensions <= 16000:
        raise InvalidInput(f"dimensions must be in 1..16000, got {dimensions}")
    sha = options_sha256(options) if options is not None else None
    row = conn.execute(
        f"""insert into embedding_spaces
              (encoder_name, encoder_version, dimensions, storage, metric, normalized, mlm,
               index_kind, options_sha256, options, index_params)
            values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            on conflict (encoder_name, encoder_version, dimensions, storage, metric,
                         options_sha256)
            do update set encoder_name = excluded.encoder_name
            returning {_COLUMNS}""",
        (
            encoder_name, encoder_version, dimensions, storage, metric, normalized,
            Jsonb(mlm or {}), index_kind, sha, Jsonb(options) if options is not None else None,
            Jsonb(params),
        ),
    ).fetchone()  # fmt: skip
    assert row is not None
    space = space_from_row(row)
    if space.normalized != normalized:
        raise Conflict(
            f"space {encoder_name} {encoder_version} ({dimensions}d) is registered with"
            f" normalized={space.normalized}, not {normalized}"
        )
    return space


def find_space(
    conn: psycopg.Connection,
    *,
    encoder_name: str,
    encoder_version: str,
    dimensions: int,
    storage: str,
    metric: str,
    options: dict[str, Any] | None,
) -> Space | None:
    """The registered space of this identity (as ``get_or_create_space`` keys it), if any."""
    sha = options_sha256(options) if options is not None else None
    row = conn.execute(
        f"select {_COLUMNS} from embedding_spaces where encoder_name = %s"
        " and encoder_version = %s and dimensions = %s and storage = %s and metric = %s"
        " and options_sha256 is not distinct from %s",
        (encoder_name, encoder_version, dimensions, storage, metric, sha),
    ).fetchone()
    return space_from_row(row) if row is not None else None


def adopt_options(conn: psycopg.Connection, space: Space, options: dict[str, Any]) -> Space:
    """Record ``options`` on a space registered before they were recorded (migration 0009).

    Only when no other space already has this identity with these options (then the old
    space stays one of unknown options). Returns the space as it is now.
    """
    sha = options_sha256(options)
    row = conn.execute(
        f"""update embedding_spaces s set options_sha256 = %s, options = %s
            where s.id = %s and s.options_sha256 is null and not exists (
                select 1 from embedding_spaces o
                where (o.encoder_name, o.encoder_version, o.dimensions, o.storage, o.metric,
                       o.options_sha256)
                    = (s.encoder_name, s.encoder_version, s.dimensions, s.storage, s.metric, %s))
            returning {_COLUMNS}""",
        (sha, Jsonb(options), space.id, sha),
    ).fetchone()
    return space_from_row(row) if row is not None else space
