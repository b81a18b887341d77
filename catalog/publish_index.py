"""The index and statistics steps of a publish, and ``embcat index build``.

At the end of a publish (in its transaction): attach a new space's partition, build the
space's index if the publish was to (it holds the space's merge lock exclusively then),
ANALYZE what was merged. ``build_index`` builds or switches an index later, taking the
merge locks as a publish that builds one.
"""

from __future__ import annotations

import time
from typing import Literal

import psycopg

from embcat.catalog.db import connect
from embcat.catalog.errors import translated
from embcat.catalog.publish_merge import MergeState
from embcat.catalog.settings import DatabaseSettings, defaults
from embcat.catalog.store import partitions, shards, space_index, staged_merge
from embcat.catalog.store import spaces as spaces_mod
from embcat.catalog.store.spaces import IndexSettings


def finish_space(conn: psycopg.Connection, state: MergeState) -> tuple[bool, float]:
    """Attach, index and analyze after the last chunk; return (index built, its seconds)."""
    space, timings = state.space, state.ctx.timings
    assert space is not None
    rows = None  # the space's row count, when this publish knows it without a count(*)
    if state.detached:
        t = time.perf_counter()
        rows = partitions.attach_partition(conn, space.id) + state.detached_rows
        timings["attach_s"] = time.perf_counter() - t
    elif state.rebuild:  # the planner's count and this publish's rows (no count(*) scan)
        built_rows = int((space.index_params or {}).get("rows") or 0)
        rows = max(int(partitions.estimated_rows(conn, space.id)), built_rows) + state.inserted
    index_s = 0.0
    built = False
    if state.build:
        t = time.perf_counter()
        # (a replaced index stays until the commit: finish_swap drops it after)
        built = space_index.ensure_index(
            conn, space, rebuild=state.rebuild, drop_old=False, index=state.ctx.index, rows=rows
        )
        index_s = time.perf_counter() - t
        state.space = spaces_mod.get_space(conn, space.id)  # the kind it was built as
    t = time.perf_counter()
    if state.inserted or state.updated:
        # The planner's columns only: statistics of the jsonb documents (properties, assets,
        # links; ~1.5 kB a row) took most of the ANALYZE time and no query plan uses them
        # (autovacuum still gathers them later).
        # Not a sharded space's partition: postgres_fdw's ANALYZE reads every remote row
        # (the shards' autovacuum keeps their own statistics).
        staged_merge.analyze(conn, space.id, partition=not shards.is_sharded(conn, space.id))
    timings["analyze_s"] = time.perf_counter() - t
    return built, index_s


def build_index(
    collection_id: str,
    settings: DatabaseSettings | None = None,
    *,
    kind: spaces_mod.IndexKind | Literal["auto"] | None = None,
    rebuild: bool = False,
    index: IndexSettings | None = None,
) -> str | None:
    """Build the index of a collection's space if absent (``embcat index build``); with
    ``kind`` other than the space's, switch the space to it (new index, then swap); with
    ``rebuild``, build anew. Returns the kind built, or None if nothing was built.

    Takes the merge lock exclusively, like a publish that builds an index, so that it
    never deadlocks with a concurrent publish.
    """
    from embcat.catalog.errors import NotFound

    with connect(settings or defaults(DatabaseSettings)) as conn, translated():
        with conn.transaction():
            conn.execute("set local statement_timeout = 0")
            space = spaces_mod.collection_space(conn, collection_id)
            if space is None:
                raise NotFound(f"collection {collection_id!r} has no embeddings")
            # the global lock exclusively only to attach a partition (see the module)
            partitions.merge_lock(conn, exclusive=not partitions.has_partition(conn, space.id))
            partitions.merge_lock(conn, space.id, exclusive=True)
            built = space_index.ensure_index(
                conn, space, kind=kind, rebuild=rebuild, drop_old=False, index=index
            )
        if built:  # the replaced index goes once the new one is committed, concurrently
            conn.commit()
            conn.autocommit = True
            space_index.finish_swap(conn, space.id)
        return spaces_mod.get_space(conn, space.id).index_kind if built else None
