"""The change feed: items added, updated and deleted in a collection since a cursor.

Every insert and update of an ``items`` row draws a new ``change_seq`` (trigger), every
delete leaves a tombstone with one. The sequence is drawn when a row is written, but
transactions commit in any order: reading ``change_seq > since`` while a writer is still
open could skip the writer's lower numbers for ever. So the feed only hands out a
*safe high-water mark* ``H``: every sequence value ``<= H`` belongs to a transaction that
has ended (docs/exchange.md, "Cursor semantics").

``H`` is computed without blocking anybody, per collection: read the sequence's last value
``L`` first, then look for other transactions of this database that hold a write lock on
``items`` (every insert, update and delete of an item takes ``RowExclusiveLock`` on the
table before it draws a number, and keeps it until the transaction ends) *and* may write
this collection. Since migration 0017 the items triggers make every transaction declare a
collection before drawing a number for it: a shared transaction-level advisory lock
``(WRITER_LOCK_CLASS, hashtext(collection_id))``. A writer counts for collection C when it
declared C, or when it declared nothing (a write that bypassed the triggers: it still holds
back every collection, as before). A transaction that declares C after the probe draws its
numbers for C after ``L`` was read, so they are above ``L``. If no writer counts, every
number up to ``L`` that C will ever hold is settled and ``H = L``. If one does, its numbers
are unknown, and the feed does not move past the cursor it was given (``pending_writers``
says why) until it has ended. Writers of other collections no longer hold C's feed back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

from embcat.catalog.errors import InvalidInput, NotFound, translated
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import items as store_items

# (named here by migration 0017; the probe of the lock is store.items.open_writers)
from embcat.catalog.store.items import WRITER_LOCK_CLASS as WRITER_LOCK_CLASS

MAX_LIMIT = 10_000


@dataclass(frozen=True)
class Change:
    op: Literal["upsert", "delete"]
    id: str
    change_seq: int

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "id": self.id, "change_seq": self.change_seq}


@dataclass(frozen=True)
class ChangePage:
    collection_id: str
    since: int
    changes: list[Change] = field(default_factory=list)
    next_cursor: int = 0
    high_water: int = 0
    more: bool = False
    pending_writers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection_id,
            "since": self.since,
            "changes": [c.as_dict() for c in self.changes],
            "next": self.next_cursor,
            "high_water": self.high_water,
            "more": self.more,
            "pending_writers": self.pending_writers,
        }


def safe_high_water(
    conn: psycopg.Connection, collection_id: str | None = None
) -> tuple[int | None, int]:
    """``(H, pending)``: the collection's safe high-water mark (None while writers of it are
    open) and how many other open transactions may write it (``collection_id`` None: that
    may write any collection)."""
    with translated():
        row = conn.execute("select pg_sequence_last_value('item_change_seq')").fetchone()
        last = int(row[0]) if row and row[0] is not None else 0
        pending = store_items.open_writers(conn, collection_id)
    return (None if pending else last), pending


def _require_collection(conn: psycopg.Connection, collection_id: str) -> None:
    with translated():
        if not store_collections.exists(conn, collection_id):
            raise NotFound(f"collection {collection_id!r} does not exist")


def changes_since(
    conn: psycopg.Connection, collection_id: str, since: int = 0, limit: int = 1000
) -> ChangePage:
    """One page of the collection's changes after ``since`` (exclusive), oldest first.

    Only the latest change of each item is listed (an item updated twice appears once, with
    its last sequence number). ``next_cursor`` is what to pass as ``since`` next time; when
    ``more`` is false it is the safe high-water mark, so empty ranges are skipped.
    """
    if since < 0:
        raise InvalidInput(f"since must be >= 0, got {since}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be in 1..{MAX_LIMIT}, got {limit}")
    _require_collection(conn, collection_id)
    high, pending = safe_high_water(conn, collection_id)
    if high is None or high <= since:
        return ChangePage(collection_id, since, [], since, max(high or 0, since), False, pending)
    with translated():
        rows = store_items.changes(conn, collection_id, since, high, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    changes = [Change(op, iid, int(seq)) for op, iid, seq in rows]
    next_cursor = changes[-1].change_seq if more else high
    return ChangePage(collection_id, since, changes, next_cursor, high, more, 0)
