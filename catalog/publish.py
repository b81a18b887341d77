"""The publish job: an encode run's shards + manifest into STAC items with vector assets.

One call is one transaction, so a failed or killed publish leaves the catalogue exactly as
it was::

    checksums of every shard (before touching the database)
    BEGIN
      pg_advisory_xact_lock('embcat-publish:<collection>')    same collection: serialised
      a reader thread streams shards by record batch -> validates -> encodes binary COPY rows
      per chunk (CHUNK_BYTES of vectors):
        binary COPY into a TEMP staging table
        duplicate ids (a TEMP table of the run's ids, not Python memory)
        first chunk: register the space, create the collection,
                     merge locks (global, then the space's; shared or exclusive)  see below
        INSERT .. SELECT into items, then embeddings (insert | upsert | ignore); chip
          thumbnails into item_thumbnails (catalog.imagery); TRUNCATE staging
      update the collection (extent of every chunk, pystac; scene quicklooks)
      build the space's HNSW index if absent (unless defer_index), ANALYZE
      publish record
    COMMIT

While the database merges one chunk, the reader prepares the next, so Python and the
server work at the same time. A bad row anywhere (even in the last chunk) rolls back the
chunks already merged: nothing is written.

Memory is bounded by the record batch, never by the input size. The reader thread builds
each item's JSON documents column-wise (Arrow string kernels) from a constant template
plus the row's columns (catalog.item_shape); the merge inserts them as they are.

The steps live in modules of their own, each handed the ``PublishContext``:

    publish_input  the manifest and shards, checked (``prepare`` makes the context)
    publish_rows   row validation, vectorised per record batch
    publish_copy   the staging rows in binary COPY form (catalog.pgbinary)
    publish_load   the reader thread and the COPY of chunks
    publish_merge  each chunk into items + embeddings (its SQL: store.staged_merge); the
                   space and the merge locks
    publish_space  which collection, and whether the run's vectors may join its space
    publish_index  partition attach, index build, ANALYZE; ``embcat index build``

The merge locks: ``embeddings`` is partitioned by space (migration 0021). A publish that
builds a space's index holds a SHARE lock on that space's partition until commit, which
would deadlock against another publish's ANALYZE or insert into the same space; so index
builders take the space's merge lock (``partitions.merge_lock``) exclusively and every
other publish of that space takes it shared. Attaching a new space's partition locks
``items`` and ``embedding_spaces`` against writes until commit: that publish takes the
global merge lock exclusively (before registering the space), every other publish takes
it shared. So an index build of one space never waits for, nor blocks, a publish of
another. Reading, validating and staging of different collections always run in
parallel.
The collection's row is locked ``FOR NO KEY UPDATE``: item writes into the collection
(whose foreign-key checks take ``FOR KEY SHARE``) do not wait for the publish.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
import pyarrow.parquet as pq

from embcat.catalog import imagery, metrics
from embcat.catalog.db import connect
from embcat.catalog.errors import EmbcatError, InvalidInput, translated
from embcat.catalog.item_shape import item_template
from embcat.catalog.publish_copy import stage_sql
from embcat.catalog.publish_index import build_index, finish_space
from embcat.catalog.publish_input import (
    MODES,
    Mode,
    PublishContext,
    load_manifest,
    prepare,
    verify_shards,
)
from embcat.catalog.publish_load import load
from embcat.catalog.publish_merge import MergeState
from embcat.catalog.publish_space import (
    check_space,
    check_target,
    existing_collection,
    space_conflict,
)
from embcat.catalog.settings import DatabaseSettings, defaults
from embcat.catalog.stacgen import build_collection
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import publishes, space_index
from embcat.catalog.store import spaces as spaces_mod
from embcat.catalog.store.spaces import IndexSettings, Space
from embcat.catalog.store.staged_merge import ANALYZE_ITEM_COLUMNS

log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    collection_id: str
    mode: str
    rows: int
    inserted: int
    updated: int
    skipped: int
    bytes: int
    elapsed_s: float
    manifest_sha256: str
    space_id: int
    created_collection: bool
    index_built: bool
    index_s: float
    publish_id: int
    index_kind: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        mb = self.bytes / 1e6
        return (
            f"published {self.rows:,} rows to {self.collection_id} ({self.mode}):"
            f" {self.inserted:,} inserted, {self.updated:,} updated, {self.skipped:,} skipped"
            f" in {self.elapsed_s:.1f} s ({self.rate:,.0f} rows/s,"
            f" {mb / self.elapsed_s if self.elapsed_s > 0 else 0:.1f} MB/s)"
            + (
                f"; searchable: load {self.elapsed_s - self.index_s:.1f} s"
                f" + {self.index_kind} index {self.index_s:.1f} s"
                if self.index_built
                else ""
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def publish(
    source: Path,
    *,
    collection_id: str | None = None,
    mode: Mode = "ignore",
    settings: DatabaseSettings | None = None,
    progress: bool = True,
    defer_index: bool = False,
    storage: Literal["halfvec", "vector"] = "halfvec",
    origin: str = "local",
    index: IndexSettings | None = None,
) -> PublishResult:
    """Publish an encode run (its folder or manifest.json) into the catalogue, atomically.

    ``index``: the kind of a new space and the graph built (the caller's settings tree;
    default: the code's)."""
    if mode not in MODES:
        raise InvalidInput(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    with metrics.publish_timer(mode) as counted:
        ctx = prepare(
            Path(source), collection_id=collection_id, mode=mode, storage=storage,
            defer_index=defer_index, progress=progress, origin=origin,
            index=index or defaults(IndexSettings),
        )  # fmt: skip
        result = _publish(ctx, settings)
        counted["rows"] = result.rows
    return result


def _publish(ctx: PublishContext, settings: DatabaseSettings | None) -> PublishResult:
    with connect(settings or defaults(DatabaseSettings)) as conn:
        conn.execute("set temp_buffers = '256MB'")
        conn.execute("set statement_timeout = 0")
        conn.execute("set jit = off")
        conn.commit()
        with translated(), conn.transaction():
            result = _publish_tx(conn, ctx)
        if result.index_built:  # an index it replaced goes now, concurrently
            conn.autocommit = True
            with translated():
                space_index.finish_swap(conn, result.space_id)
    result.elapsed_s = time.perf_counter() - ctx.t0
    log.info(result.summary())
    return result


def _begin(conn: psycopg.Connection, ctx: PublishContext) -> MergeState:
    """Lock the collection, check the run against its space, create the staging tables."""
    enc, cid = ctx.manifest.encoder, ctx.collection_id
    conn.execute("select pg_advisory_xact_lock(hashtext('embcat-publish:' || %s))", (cid,))
    existing = existing_collection(conn, cid)
    existing_stac: dict[str, Any] | None = None
    old_space: Space | None = None
    if existing is not None:
        existing_stac, old_space = existing
        if old_space is not None:
            check_space(cid, old_space, ctx.manifest, existing_stac)
            ctx = dataclasses.replace(ctx, storage=old_space.storage)
        else:  # reserved (embcat collections create): keep its title, not its extent
            existing_stac = {k: v for k, v in existing_stac.items() if k != "extent"}
    if ctx.storage == "halfvec" and enc.dimensions > spaces_mod.INDEX_MAX_DIMS["halfvec"]:
        log.warning("%d dimensions exceed the halfvec index limit; no HNSW index", enc.dimensions)
    # A stand-in space (id 0) for staging; the real one is registered after validation so
    # that staging never waits on another publish's uncommitted space row.
    conn.execute(stage_sql(_staging_space(ctx)))
    conn.execute(
        "CREATE TEMP TABLE publish_ids (id text PRIMARY KEY, chunk int NOT NULL) ON COMMIT DROP"
    )
    for key in ("stage_s", "merge_items_s", "merge_embeddings_s"):
        ctx.timings[key] = 0.0
    return MergeState(
        ctx=ctx, existing_stac=existing_stac, created=existing is None, known_space=old_space,
        thumbnails=any(imagery.shard_has_thumbnails(pq.read_schema(p)) for p in ctx.shard_paths),
    )  # fmt: skip


def _staging_space(ctx: PublishContext) -> Space:
    enc = ctx.manifest.encoder
    return Space(0, enc.name, enc.version, enc.dimensions, ctx.storage)  # type: ignore[arg-type]


def _publish_tx(conn: psycopg.Connection, ctx: PublishContext) -> PublishResult:
    state = _begin(conn, ctx)
    ctx = state.ctx
    cid, manifest = ctx.collection_id, ctx.manifest
    # The items' constant parts; the space's id is not part of them.
    rows = load(conn, state, item_template(manifest, cid, _staging_space(ctx)))
    if rows == 0 or state.space is None:
        raise InvalidInput("the run has no rows to publish")
    space = state.space

    # the collection's extent is that of every chunk merged
    assert state.extent is not None
    stac = build_collection(
        manifest, cid, space, bbox=state.extent[:4], interval=(state.extent[4], state.extent[5]),
        existing=state.existing_stac,
    )  # fmt: skip
    stac = imagery.collection_imagery(
        stac, cid, ctx.quicklooks, state.existing_stac, thumbnails=state.thumbnails
    )
    imagery.store_quicklooks(conn, cid, ctx.quicklooks)
    store_collections.set_stac_and_space(
        conn, cid, stac, space.id, only_if_changed=True, keep_updated_at=state.created
    )
    built, index_s = finish_space(conn, state)
    return _record(conn, state, rows, built, index_s)


def _record(
    conn: psycopg.Connection, state: MergeState, rows: int, built: bool, index_s: float
) -> PublishResult:
    """The publish's record (table ``publishes``) and its result."""
    ctx, space = state.ctx, state.space
    assert space is not None
    enc, t0, timings = ctx.manifest.encoder, ctx.t0, ctx.timings
    inserted, updated = state.inserted, state.updated
    skipped = rows - inserted - updated
    details = {
        "bytes": ctx.total_bytes,
        "source_bytes": ctx.manifest.source_bytes,
        "shards": len(ctx.shard_paths),
        "chunks": state.chunks,
        "space_id": space.id,
        "index_built": built,
        "index_kind": space.index_kind,
        "index_s": round(index_s, 3),
        "load_s": round(time.perf_counter() - t0 - index_s, 3),
        "encoder": f"{enc.name} {enc.version}",
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    checksum = ctx.manifest.checksum()
    publish_id = publishes.insert(
        conn, ctx.collection_id, manifest_sha256=checksum, mode=ctx.mode, origin=ctx.origin,
        started_at=ctx.started_wall, rows_in=rows, inserted=inserted, updated=updated,
        skipped=skipped, details=details,
    )  # fmt: skip
    return PublishResult(
        collection_id=ctx.collection_id,
        mode=ctx.mode,
        rows=rows,
        inserted=inserted,
        updated=updated,
        skipped=skipped,
        bytes=ctx.total_bytes,
        elapsed_s=time.perf_counter() - t0,
        manifest_sha256=checksum,
        space_id=space.id,
        created_collection=state.created,
        index_built=built,
        index_s=index_s,
        publish_id=publish_id,
        index_kind=space.index_kind,
        timings=timings,
    )


def list_publishes(
    conn: psycopg.Connection, collection_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Publish records, newest first."""
    return publishes.records(conn, collection_id, limit)


__all__ = [
    "ANALYZE_ITEM_COLUMNS",
    "MODES",
    "EmbcatError",
    "PublishContext",
    "PublishResult",
    "build_index",
    "check_target",
    "list_publishes",
    "load_manifest",
    "publish",
    "space_conflict",
    "verify_shards",
]
