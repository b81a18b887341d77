"""Embedding spaces: registration, the per-space similarity index, and the SQL to query it.

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
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg.types.json import Jsonb
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from embcat.catalog.errors import Conflict, InvalidInput, NotFound
from embcat.catalog.settings import defaults
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
        f" {AUTO_BIT_MIN_DIMS} dimensions, hnsw-halfvec below (benchmarks/README.md, Scale).",
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

    @property
    def column(self) -> str:
        return "embedding" if self.storage == "halfvec" else "embedding_f32"

    @property
    def sql_type(self) -> str:
        return f"{self.storage}({self.dimensions})"

    def vector_sql(self, alias: str = "e") -> str:
        """The cast expression the space's index is built on, e.g. ``e.embedding::halfvec(768)``."""
        return f"({alias}.{self.column}::{self.sql_type})"

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


_COLUMNS = (
    "id, encoder_name, encoder_version, dimensions, storage, metric, normalized, mlm,"
    " index_kind, index_center, options_sha256, options"
)


def _row_to_space(row: tuple[Any, ...]) -> Space:
    sid, name, version, dims, storage, metric, normalized, mlm, kind, center, sha, options = row
    return Space(
        sid, name, version, dims, storage, metric, normalized, mlm or {}, kind,
        tuple(center) if center is not None else None, sha, options,
    )  # fmt: skip


def get_space(conn: psycopg.Connection, space_id: int) -> Space:
    row = conn.execute(
        f"select {_COLUMNS} from embedding_spaces where id = %s", (space_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"embedding space {space_id} does not exist")
    return _row_to_space(row)


def collection_space(conn: psycopg.Connection, collection_id: str) -> Space | None:
    """The collection's space (None: the collection has no embeddings yet)."""
    row = conn.execute(
        "select c.space_id from collections c where c.id = %s", (collection_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"collection {collection_id!r} does not exist")
    return get_space(conn, row[0]) if row[0] is not None else None


def list_spaces(conn: psycopg.Connection) -> list[Space]:
    rows = conn.execute(f"select {_COLUMNS} from embedding_spaces order by id").fetchall()
    return [_row_to_space(r) for r in rows]


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
    only; an existing space keeps its kind (``ensure_index(..., kind=...)`` switches it).
    ``options``: the canonical encoder options (encoders.manifest.space_options); their
    hash is part of the identity, so the same encoder with another seed, band list or
    checkpoint is another space. Without them (a mirror of a catalogue that records none)
    the space is one of unknown options.
    """
    if index_kind is None:
        index_kind = default_kind(dimensions, index.kind if index is not None else None)
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
               index_kind, options_sha256, options)
            values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            on conflict (encoder_name, encoder_version, dimensions, storage, metric,
                         options_sha256)
            do update set encoder_name = excluded.encoder_name
            returning {_COLUMNS}""",
        (
            encoder_name, encoder_version, dimensions, storage, metric, normalized,
            Jsonb(mlm or {}), index_kind, sha, Jsonb(options) if options is not None else None,
        ),
    ).fetchone()  # fmt: skip
    assert row is not None
    space = _row_to_space(row)
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
    return _row_to_space(row) if row is not None else None


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
    return _row_to_space(row) if row is not None else space


DEFAULT_PARTITION = "embeddings_default"


def partition_name(space_id: int) -> str:
    """The partition of ``embeddings`` that holds the space's rows."""
    return f"embeddings_space_{int(space_id)}"


def has_partition(conn: psycopg.Connection, space_id: int) -> bool:
    """Whether the space's partition exists and is attached to ``embeddings``."""
    name = f"public.{partition_name(space_id)}"
    row = conn.execute(
        "select exists (select 1 from pg_inherits where inhrelid = to_regclass(%s)"
        " and inhparent = 'public.embeddings'::regclass)",
        (name,),
    ).fetchone()
    return bool(row and row[0])


def space_table(conn: psycopg.Connection, space_id: int) -> str:
    """The table that holds the space's rows: its partition, or the default partition."""
    return partition_name(space_id) if has_partition(conn, space_id) else DEFAULT_PARTITION


def merge_lock(
    conn: psycopg.Connection, space_id: int | None = None, *, exclusive: bool = False
) -> None:
    """Take a publish merge lock until the transaction ends (catalog.publish explains
    them): the global one (``space_id`` None; exclusively to attach a partition) or the
    space's (exclusively to build the space's index). Take the global one first."""
    key = "embcat-publish-merge" if space_id is None else f"embcat-publish-merge:{int(space_id)}"
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(f"select {fn}(hashtext('{key}'))")  # (the key in the text: pg_stat_activity)


def holds_no_rows(conn: psycopg.Connection, space_id: int) -> bool:
    """Whether the space has neither a partition table (attached or not) nor rows in the
    default partition."""
    row = conn.execute(
        f"select to_regclass(%s) is null and not exists (select 1 from public.{DEFAULT_PARTITION}"
        " where space_id = %s)",
        (f"public.{partition_name(space_id)}", int(space_id)),
    ).fetchone()
    return bool(row and row[0])


def create_partition_table(conn: psycopg.Connection, space_id: int) -> str:
    """The space's partition as a table of its own, not yet attached (``attach_partition``):
    the columns, defaults and checks of ``embeddings`` plus ``space_id = <id>`` (so that
    ATTACH need not scan it); no index, key or trigger until it is attached, so a publish
    can fill it by plain INSERTs and ATTACH then builds its indexes in bulk and checks its
    foreign keys with one join. Returns its name."""
    name, sid = partition_name(space_id), int(space_id)
    conn.execute(
        f"create table public.{name}"
        " (like public.embeddings including defaults including constraints)"
    )
    conn.execute(f"alter table public.{name} add constraint {name}_space check (space_id = {sid})")
    return name


def attach_partition(conn: psycopg.Connection, space_id: int) -> int:
    """Attach the space's partition table (``create_partition_table``) to ``embeddings``,
    with the rows of the space the default partition holds moved in first; returns how
    many moved. ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on ``embeddings``
    (readers and writers of the other partitions go on; CREATE TABLE .. PARTITION OF would
    lock every reader out until commit); it builds the parent's geometry GiST on the
    partition, and ``embcat.add_partition_keys`` (migration 0024) then builds its primary
    key and validates its foreign keys, which locks
    ``items`` and ``embedding_spaces`` against writes until the caller commits. Callers
    hold the global publish merge lock exclusively, so that this never deadlocks with a
    concurrent publish."""
    name, sid = partition_name(space_id), int(space_id)
    moved = conn.execute(
        f"with moved as (delete from public.{DEFAULT_PARTITION} where space_id = {sid}"
        f" returning *) insert into public.{name} select * from moved"
    )
    conn.execute(
        f"alter table public.embeddings attach partition public.{name} for values in ({sid})"
    )
    # the keys live on each local partition (migration 0024: a shard's foreign partition
    # cannot sit under a parent with a primary key or foreign keys)
    conn.execute("select embcat.add_partition_keys(%s)", (name,))
    log.info("space %s: partition %s attached (%d rows moved in)", sid, name, moved.rowcount)
    return moved.rowcount


def ensure_partition(conn: psycopg.Connection, space_id: int) -> bool:
    """Give the space its own partition of ``embeddings`` if it has none (True: created
    and attached; see ``attach_partition`` for the locks)."""
    if has_partition(conn, space_id):
        return False
    row = conn.execute(
        "select to_regclass(%s) is null", (f"public.{partition_name(space_id)}",)
    ).fetchone()
    if row and row[0]:
        create_partition_table(conn, space_id)
    attach_partition(conn, space_id)
    return True


def has_index(conn: psycopg.Connection, space: Space) -> bool:
    """Whether the index of the space's kind exists and is valid (binary kinds: and the
    centre it was built with is recorded)."""
    if space.binary and space.center is None:
        return False
    row = conn.execute(
        "select i.indisvalid from pg_class c join pg_index i on i.indexrelid = c.oid"
        " where c.relname = %s",
        (space.index_name,),
    ).fetchone()
    return bool(row and row[0])


def hnsw_memory_bytes(rows: int, space: Space, m: int = 16) -> int:
    """Rough size of the HNSW graph being built (GUIDE §3: N * (8 + 2d) * 1.3 for halfvec)."""
    bytes_per_value = 2 if space.storage == "halfvec" else 4
    return int(rows * (8 + bytes_per_value * space.dimensions + 8 * m) * 1.3)


def index_memory_bytes(rows: int, space: Space, kind: str, m: int = 16) -> int:
    """Build memory of an index of ``kind`` over ``rows`` vectors of ``space``."""
    if kind == "hnsw-halfvec":
        return hnsw_memory_bytes(rows, space, m)
    if kind == "hnsw-bit":  # the graph holds d/8 bytes of code a node
        return int(rows * (8 + space.dimensions // 8 + 8 * m) * 1.3)
    return 256 << 20  # IVFFlat: the k-means sample, whatever N


def ivfflat_lists(rows: int) -> int:
    """IVFFlat lists for ``rows`` vectors: sqrt(N) (measured: 316 at 100k, 1000 at 1M)."""
    return max(1, round(rows**0.5))


def space_center(conn: psycopg.Connection, space: Space) -> tuple[float, ...]:
    """The mean of the space's vectors as the binary code sees them (``Space.coded_sql``:
    unit length in cosine spaces), zeros when empty."""
    row = conn.execute(
        f"select avg({space.coded_sql('embeddings')})::real[] from embeddings"
        f" where space_id = {int(space.id)}"
    ).fetchone()
    if row is None or row[0] is None:
        return tuple(0.0 for _ in range(space.dimensions))
    return tuple(float(v) for v in row[0])


def ensure_index(
    conn: psycopg.Connection,
    space: Space,
    *,
    kind: IndexKind | None = None,
    rebuild: bool = False,
    drop_old: bool = True,
    m: int | None = None,
    ef_construction: int | None = None,
    maintenance_work_mem_mb: int | None = None,
    index: IndexSettings | None = None,
) -> bool:
    """Build the space's similarity index if absent or invalid. Returns True if built.

    ``kind`` (default: the space's recorded kind) other than the recorded one switches the
    space: the new index is built beside the old, then the kind (and the binary kinds'
    centre) is recorded and the old index dropped. ``rebuild`` builds anew even when the
    index exists (a binary index re-centred on today's data). Runs in the caller's
    transaction (so a failed publish rolls the index back too; readers keep the old index
    until it commits). ``drop_old`` False leaves the replaced index in place (readers are
    then never blocked, not even by the drop's lock): ``finish_swap`` drops it after the
    commit. The HNSW graph's ``m`` and ``ef_construction`` come from ``index`` (the
    caller's IndexSettings; default: the code's) unless given; the build memory is sized
    from the row count unless given, capped at 4 GiB.
    """
    space = get_space(conn, space.id)  # as recorded now (a caller's copy may predate a build)
    kind = kind or space.index_kind
    if kind not in INDEX_KINDS:
        raise InvalidInput(f"unknown index kind {kind!r}; use one of {list(INDEX_KINDS)}")
    if m is None or ef_construction is None:
        graph = index if index is not None else defaults(IndexSettings)
        m = graph.m if m is None else m
        ef_construction = graph.ef_construction if ef_construction is None else ef_construction
    if not kind_indexable(kind, space.storage, space.dimensions):
        log.warning(
            "space %s: %d dimensions exceed the %s limit of a %s index; queries scan exactly",
            space.id,
            space.dimensions,
            space.storage,
            kind,
        )
        return False
    from embcat.catalog import shards  # (it imports this module)

    if shards.is_sharded(conn, space.id):
        return shards.ensure_index(conn, space, kind=kind, rebuild=rebuild)
    if kind == space.index_kind and not rebuild and has_index(conn, space):
        return False
    ensure_partition(conn, space.id)
    table = partition_name(space.id)
    row = conn.execute(
        "select count(*) from embeddings where space_id = %s", (space.id,)
    ).fetchone()
    rows = int(row[0]) if row else 0
    if maintenance_work_mem_mb is None:
        need = index_memory_bytes(rows, space, kind, m)
        maintenance_work_mem_mb = min(max(64, need // (1 << 20) + 16), 4096)
    conn.execute(f"set local maintenance_work_mem = '{int(maintenance_work_mem_mb)}MB'")
    conn.execute("set local max_parallel_maintenance_workers = 2")
    started = time.perf_counter()
    target = index_name(space.id, kind)
    existing = _index_names(conn, space.id)
    # the new index under a name of its own when one of that name must stay until the swap
    building = f"{target}_new" if target in existing else target
    existing = [name for name in existing if name != building]
    conn.execute(f"drop index if exists {building}")
    center: tuple[float, ...] | None = None
    params: dict[str, Any]
    built_space = Space(
        space.id, space.encoder_name, space.encoder_version, space.dimensions, space.storage,
        space.metric, space.normalized, space.mlm, kind,
    )  # fmt: skip
    if kind == "hnsw-halfvec":
        params = {"m": int(m), "ef_construction": int(ef_construction)}
        definition = (
            f"using hnsw ({built_space.vector_sql(table)} {space.opclass})"
            f" with (m = {int(m)}, ef_construction = {int(ef_construction)})"
        )
    else:
        center = space_center(conn, space)
        # the literal's values as real[] (float32) holds them
        center = tuple(float(v) for v in np.asarray(center, np.float32))
        built_space = replace(built_space, center=center)
        code = built_space.code_sql(table)
        if kind == "ivfflat-bit":
            lists = ivfflat_lists(rows)
            params = {"lists": lists}
            definition = f"using ivfflat ({code} bit_hamming_ops) with (lists = {lists})"
        else:
            params = {"m": int(m), "ef_construction": int(ef_construction)}
            definition = (
                f"using hnsw ({code} bit_hamming_ops)"
                f" with (m = {int(m)}, ef_construction = {int(ef_construction)})"
            )
    conn.execute(f"create index {building} on public.{table} {definition}")
    params["rows"] = rows
    params["build_s"] = round(time.perf_counter() - started, 3)
    conn.execute(
        "update embedding_spaces set index_kind = %s, index_center = %s, index_params = %s"
        " where id = %s",
        (kind, list(center) if center is not None else None, Jsonb(params), space.id),
    )
    if drop_old:
        # the swap: every other similarity index of the space goes, the new one takes its name
        for name in existing:
            conn.execute(f"drop index if exists {name}")
        if building != target:
            conn.execute(f"alter index {building} rename to {target}")
    log.info("built %s (%s) in %.1f s", target, kind, time.perf_counter() - started)
    return True


def ensure_hnsw_index(
    conn: psycopg.Connection,
    space: Space,
    *,
    m: int | None = None,
    ef_construction: int | None = None,
    maintenance_work_mem_mb: int | None = None,
    index: IndexSettings | None = None,
) -> bool:
    """The space's index of its recorded kind, if absent (the name of earlier versions,
    when every space had an HNSW index): ``ensure_index`` without a kind."""
    return ensure_index(
        conn, space, m=m, ef_construction=ef_construction,
        maintenance_work_mem_mb=maintenance_work_mem_mb, index=index,
    )  # fmt: skip


def finish_swap(conn: psycopg.Connection, space_id: int) -> list[str]:
    """After ``ensure_index(..., drop_old=False)`` has committed: drop the space's replaced
    indexes with ``DROP INDEX CONCURRENTLY`` (no lock that blocks readers or writers) and
    give the new one its name. ``conn`` must be in autocommit mode. Returns the dropped."""
    if not conn.autocommit:
        raise ValueError("finish_swap needs an autocommit connection (DROP INDEX CONCURRENTLY)")
    space = get_space(conn, space_id)
    target = space.index_name
    existing = _index_names(conn, space_id)
    dropped = []
    keep = {target, f"{target}_new"}
    if f"{target}_new" in existing:
        keep = {f"{target}_new"}
    for name in existing:
        if name not in keep:
            conn.execute(f"drop index concurrently if exists {name}")
            dropped.append(name)
    if f"{target}_new" in existing:
        conn.execute(f"alter index {target}_new rename to {target}")
    return dropped


def _index_names(conn: psycopg.Connection, space_id: int) -> list[str]:
    """The similarity indexes of a space (on its partition, or partial ones on the default
    partition; any kind, valid or not)."""
    names = [index_name(space_id, k) for k in INDEX_KINDS]
    rows = conn.execute(
        "select c.relname from pg_class c join pg_index i on i.indexrelid = c.oid"
        " where i.indrelid in (to_regclass(%s), to_regclass(%s)) and c.relname = any(%s)",
        (
            f"public.{partition_name(space_id)}",
            f"public.{DEFAULT_PARTITION}",
            names + [f"{n}_new" for n in names],
        ),
    ).fetchall()
    return [r[0] for r in rows]
