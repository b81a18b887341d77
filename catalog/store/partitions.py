"""A space's partition of ``embeddings`` (migration 0021) and the publish merge locks.

Each space's rows live in ``embeddings_space_<id>`` (``partition_name``), created with
``ensure_partition`` when the space is first published; rows of a space without one (a
mirror's first pages, rows written by hand) sit in ``embeddings_default`` until
``ensure_partition`` moves them, under the merge lock, before the space's index is built.
"""

from __future__ import annotations

import logging

import psycopg

log = logging.getLogger(__name__)

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


def estimated_rows(conn: psycopg.Connection, space_id: int) -> float:
    """The planner's row count of the table that holds the space's rows (0 before its
    first ANALYZE)."""
    row = conn.execute(
        "select greatest(reltuples, 0) from pg_class where oid = %s::regclass",
        (space_table(conn, space_id),),
    ).fetchone()
    return float(row[0]) if row else 0.0


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
