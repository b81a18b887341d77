"""The publish's merge: each staged chunk into ``items`` and ``embeddings`` (and thumbnails).

``merge_chunk`` checks the chunk's ids (duplicates in the run, clashes in mode insert),
registers the space and creates the collection on the first chunk, takes the merge locks
(see catalog.publish, "The merge locks"), then merges the staging table into items and
embeddings (``store.staged_merge``). ``MergeState`` is what the merges of one publish
accumulate, in its one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from embcat.catalog.errors import Conflict, InvalidInput
from embcat.catalog.publish_input import MAX_REPORTED, PublishContext
from embcat.catalog.publish_rows import union
from embcat.catalog.stacgen import build_collection
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import imagery as store_imagery
from embcat.catalog.store import partitions, shards, space_index, staged_merge
from embcat.catalog.store import spaces as spaces_mod
from embcat.catalog.store.spaces import Space
from embcat.encoders.manifest import space_options


@dataclass
class MergeState:
    """What the chunk merges of one publish accumulate (all in its one transaction)."""

    ctx: PublishContext
    existing_stac: dict[str, Any] | None
    created: bool
    known_space: Space | None = None  # the existing collection's space (checked)
    space: Space | None = None
    build: bool = False
    rebuild: bool = False  # the build replaces an index (readers keep it until the commit)
    detached: str | None = None  # the new space's partition table, attached at the end
    detached_rows: int = 0  # rows merged into it (its index's row count, without a scan)
    inserted: int = 0
    updated: int = 0
    extent: list[Any] | None = None
    chunks: int = 0
    thumbnails: bool = False  # some shard has the thumbnail column


def merge_chunk(
    conn: psycopg.Connection, state: MergeState, staged: int, extent: list[Any]
) -> None:
    """Check the staged chunk (``staged`` rows within ``extent``), then INSERT .. SELECT
    it into items and embeddings."""
    ctx = state.ctx
    manifest, cid, timings = ctx.manifest, ctx.collection_id, ctx.timings
    enc = manifest.encoder
    # duplicate ids: within the chunk, or already seen in an earlier chunk of this run
    state.chunks += 1
    fresh = conn.execute(
        "WITH ins AS (INSERT INTO publish_ids SELECT id, %s FROM publish_staging"
        " ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM ins",
        (state.chunks,),
    ).fetchone()
    if fresh != (staged,):
        dups = conn.execute(
            "select s.id, count(*) + max(case when p.chunk < %(k)s then 1 else 0 end)"
            " from publish_staging s left join publish_ids p on p.id = s.id group by s.id"
            " having count(*) + max(case when p.chunk < %(k)s then 1 else 0 end) > 1"
            " order by s.id limit %(n)s",
            {"k": state.chunks, "n": MAX_REPORTED},
        ).fetchall()
        listed = ", ".join(f"{d[0]!r} ({d[1]}x)" for d in dups)
        raise InvalidInput(f"duplicate item ids in the input, nothing was published: {listed}")
    state.extent = union(state.extent, extent)

    if state.space is None:  # first chunk: the merge lock, the space, the collection row
        # The global lock comes first: a new space (or one without its partition) takes it
        # exclusively, before its row is inserted, so that attaching its partition
        # (which locks embedding_spaces and items against writes) never waits on another
        # publish's uncommitted space row while that one waits for the lock.
        known = state.known_space or spaces_mod.find_space(
            conn, encoder_name=enc.name, encoder_version=enc.version,
            dimensions=enc.dimensions, storage=ctx.storage, metric=enc.metric,
            options=space_options(manifest),
        )  # fmt: skip
        new_partition = known is None or not partitions.has_partition(conn, known.id)
        partitions.merge_lock(conn, exclusive=new_partition)
        if state.known_space is not None:
            space = state.known_space
            if space.options_sha256 is None:  # registered before 0009; the run matched it
                space = spaces_mod.adopt_options(conn, space, space_options(manifest))
        else:
            space = spaces_mod.get_or_create_space(
                conn,
                encoder_name=enc.name,
                encoder_version=enc.version,
                dimensions=enc.dimensions,
                storage=ctx.storage,  # type: ignore[arg-type]
                metric=enc.metric,
                normalized=enc.normalized,
                mlm=enc.mlm,
                options=space_options(manifest),
                index=ctx.index,
            )
        state.space = space
        if state.created:
            stac = build_collection(
                manifest, cid, space, bbox=state.extent[:4],
                interval=(state.extent[4], state.extent[5]),
            )  # fmt: skip
            store_collections.insert(conn, cid, stac, space.id)
        # (checked again under the lock: a concurrent publish of the same new space may
        # have attached it while this one waited)
        if new_partition and not partitions.has_partition(conn, space.id):
            if partitions.holds_no_rows(conn, space.id):
                # its partition is filled as a table of its own and attached after the
                # last chunk (indexes built in bulk, foreign keys checked by one join; see
                # partitions.create_partition_table)
                state.detached = partitions.create_partition_table(conn, space.id)
            else:  # rows in the default partition (a mirror's): move them in now
                partitions.ensure_partition(conn, space.id)
        # the index is built when missing, re-judged ("auto") or grown out of (rebuilt)
        due = space_index.build_due(conn, space, manifest.rows) if space.indexable else None
        state.build = (not ctx.defer_index) and due is not None
        state.rebuild = state.build and due != "missing"
        partitions.merge_lock(conn, space.id, exclusive=state.build)
    space = state.space
    # A collection this publish created holds nothing but what it merges, and the run's
    # ids are unique (checked above): plain INSERTs, without ON CONFLICT's speculative
    # insertion, and nothing to clash with.
    mode = "insert" if state.created else ctx.mode
    if ctx.mode == "insert" and not state.created:
        clash = staged_merge.clashes(conn, cid, MAX_REPORTED)
        if clash:
            raise Conflict(
                f"mode insert: {len(clash)}{'+' if len(clash) == MAX_REPORTED else ''} items"
                f" already exist in {cid!r}: {', '.join(repr(c) for c in clash)}"
                " (use --mode upsert or --mode ignore)"
            )
    t = time.perf_counter()
    inserted, updated = staged_merge.merge_items(conn, cid, mode)
    state.inserted += inserted
    state.updated += updated
    timings["merge_items_s"] += time.perf_counter() - t
    if state.thumbnails or mode == "upsert":
        store_imagery.merge_thumbnails(conn, cid, mode)
    t = time.perf_counter()
    if state.detached:  # nothing there to conflict with (a new space; ids checked above)
        state.detached_rows += staged_merge.merge_embeddings(
            conn, space, "insert", cid, state.detached
        )
    elif shards.is_sharded(conn, space.id):  # written through to the shards
        shards.merge_embeddings(conn, space, mode, cid)
    else:
        table = partitions.space_table(conn, space.id)
        staged_merge.merge_embeddings(conn, space, mode, cid, table)
    timings["merge_embeddings_s"] += time.perf_counter() - t
    conn.execute("TRUNCATE publish_staging")
