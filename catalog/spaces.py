"""Embedding spaces: registration, the per-space HNSW index, and the SQL to query it.

Every space shares the ``embeddings`` table. A query must use the same cast and the same
operator class as the space's partial index to hit it; ``Space.vector_sql`` and
``Space.distance_op`` are the one place that spells them out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from catalog.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)

Metric = Literal["cosine", "l2", "inner_product"]
Storage = Literal["halfvec", "vector"]

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
        return f"embeddings_hnsw_space_{self.id}"

    @property
    def indexable(self) -> bool:
        return self.dimensions <= INDEX_MAX_DIMS[self.storage]


_COLUMNS = "id, encoder_name, encoder_version, dimensions, storage, metric, normalized, mlm"


def _row_to_space(row: tuple[Any, ...]) -> Space:
    sid, name, version, dims, storage, metric, normalized, mlm = row
    return Space(sid, name, version, dims, storage, metric, normalized, mlm or {})


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
) -> Space:
    """Register a space (idempotent on its identity) inside the caller's transaction."""
    if storage not in INDEX_MAX_DIMS:
        raise InvalidInput(f"unknown storage {storage!r}; use 'halfvec' or 'vector'")
    if metric not in _OPS:
        raise InvalidInput(f"unknown metric {metric!r}; use one of {sorted(_OPS)}")
    if not 0 < dimensions <= 16000:
        raise InvalidInput(f"dimensions must be in 1..16000, got {dimensions}")
    row = conn.execute(
        f"""insert into embedding_spaces
              (encoder_name, encoder_version, dimensions, storage, metric, normalized, mlm)
            values (%s, %s, %s, %s, %s, %s, %s)
            on conflict (encoder_name, encoder_version, dimensions, storage, metric)
            do update set encoder_name = excluded.encoder_name
            returning {_COLUMNS}""",
        (encoder_name, encoder_version, dimensions, storage, metric, normalized, Jsonb(mlm or {})),
    ).fetchone()
    assert row is not None
    space = _row_to_space(row)
    if space.normalized != normalized:
        raise Conflict(
            f"space {encoder_name} {encoder_version} ({dimensions}d) is registered with"
            f" normalized={space.normalized}, not {normalized}"
        )
    return space


def has_index(conn: psycopg.Connection, space: Space) -> bool:
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


def ensure_hnsw_index(
    conn: psycopg.Connection,
    space: Space,
    *,
    m: int | None = None,
    ef_construction: int | None = None,
    maintenance_work_mem_mb: int | None = None,
) -> bool:
    """Build the space's partial HNSW index if it is absent or invalid. Returns True if built.

    Runs in the caller's transaction (so a failed publish rolls the index back too). The
    graph's ``m`` and ``ef_construction`` come from IndexSettings unless given; the build
    memory is sized from the row count unless given, capped at 4 GiB.
    """
    if m is None or ef_construction is None:
        graph = IndexSettings()
        m = graph.m if m is None else m
        ef_construction = graph.ef_construction if ef_construction is None else ef_construction
    if not space.indexable:
        log.warning(
            "space %s: %d dimensions exceed the %s index limit (%d); queries scan exactly",
            space.id,
            space.dimensions,
            space.storage,
            INDEX_MAX_DIMS[space.storage],
        )
        return False
    if has_index(conn, space):
        return False
    conn.execute(f"drop index if exists {space.index_name}")
    if maintenance_work_mem_mb is None:
        row = conn.execute(
            "select count(*) from embeddings where space_id = %s", (space.id,)
        ).fetchone()
        need = hnsw_memory_bytes(int(row[0]) if row else 0, space, m)
        maintenance_work_mem_mb = min(max(64, need // (1 << 20) + 16), 4096)
    conn.execute(f"set local maintenance_work_mem = '{int(maintenance_work_mem_mb)}MB'")
    conn.execute("set local max_parallel_maintenance_workers = 2")
    started = time.perf_counter()
    conn.execute(
        f"create index {space.index_name} on embeddings using hnsw"
        f" ({space.vector_sql('embeddings')} {space.opclass})"
        f" with (m = {int(m)}, ef_construction = {int(ef_construction)})"
        f" where space_id = {int(space.id)}"
    )
    log.info("built %s in %.1f s", space.index_name, time.perf_counter() - started)
    return True
