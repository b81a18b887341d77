"""The ``collections`` table: one row reader (:class:`CollectionRow`), existence, the
locked reads the writers need, listing, insert, update, delete and setting the space.

Every statement runs in the caller's transaction and raises what psycopg raises: callers
that report domain errors keep their own ``translated()`` block and their own messages
(the domain rules, e.g. the id rule and reserving, stay in ``catalog.collections``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

Lock = Literal["update", "no key update"]
_LOCKS: dict[Lock, str] = {"update": " for update", "no key update": " for no key update"}


@dataclass(frozen=True)
class CollectionRow:
    """A row of ``collections``: the stored STAC document and the embedding space (None
    while the collection has no vectors: a reserved or transaction-made collection)."""

    id: str
    stac: dict[str, Any]
    space_id: int | None

    def mapping(self) -> dict[str, Any]:
        """The row as the mapping ``catalog.stac.collection_to_stac`` reads."""
        return {"id": self.id, "stac": self.stac, "space_id": self.space_id}


@dataclass(frozen=True)
class CollectionSummary:
    """A collection as ``embcat collections list`` shows it (space fields None: none)."""

    id: str
    title: str | None
    created_at: datetime
    items: int
    encoder_name: str | None
    encoder_version: str | None
    dimensions: int | None
    metric: str | None


_ROW = "select id, stac, space_id from collections"


def _row(found: tuple[Any, ...] | None) -> CollectionRow | None:
    return None if found is None else CollectionRow(found[0], found[1], found[2])


def exists(conn: psycopg.Connection, collection_id: str) -> bool:
    found = conn.execute("select 1 from collections where id = %s", (collection_id,))
    return found.fetchone() is not None


def get(
    conn: psycopg.Connection, collection_id: str, *, lock: Lock | None = None
) -> CollectionRow | None:
    """The collection's row (None: no such collection), locked ``for update`` or ``for no
    key update`` when ``lock`` says so."""
    suffix = _LOCKS[lock] if lock is not None else ""
    return _row(conn.execute(f"{_ROW} where id = %s{suffix}", (collection_id,)).fetchone())


def find_space_id(conn: psycopg.Connection, collection_id: str) -> tuple[bool, int | None]:
    """(found, space id) of the collection, without reading its document."""
    found = conn.execute("select space_id from collections where id = %s", (collection_id,))
    row = found.fetchone()
    return (False, None) if row is None else (True, row[0])


def stac_bigint(conn: psycopg.Connection, collection_id: str, key: str) -> int | None:
    """A top-level field of the collection's document cast to ``bigint`` (None: absent)."""
    row = conn.execute(
        "select (stac ->> %s::text)::bigint from collections where id = %s", (key, collection_id)
    ).fetchone()
    return None if row is None else row[0]


def list_rows(conn: psycopg.Connection) -> list[CollectionRow]:
    """Every collection's row, by id."""
    rows = conn.execute(f"{_ROW} order by id").fetchall()
    return [CollectionRow(r[0], r[1], r[2]) for r in rows]


def summaries(conn: psycopg.Connection) -> list[CollectionSummary]:
    """Every collection with its title, item count and space, by id."""
    rows = conn.execute(
        "select c.id, c.stac->>'title', c.created_at,"
        " (select count(*) from items i where i.collection_id = c.id),"
        " s.encoder_name, s.encoder_version, s.dimensions, s.metric"
        " from collections c left join embedding_spaces s on s.id = c.space_id"
        " order by c.id"
    ).fetchall()
    return [CollectionSummary(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6], r[7]) for r in rows]


def dependents(conn: psycopg.Connection, collection_id: str) -> tuple[int, int, int]:
    """What a delete of the collection removes with it: (items, keys, mirrors)."""
    counts = conn.execute(
        "select (select count(*) from items where collection_id = %(c)s),"
        " (select count(*) from api_keys where collection_id = %(c)s),"
        " (select count(*) from mirror_state where collection_id = %(c)s)",
        {"c": collection_id},
    ).fetchone()
    assert counts is not None
    return int(counts[0]), int(counts[1]), int(counts[2])


def insert(
    conn: psycopg.Connection,
    collection_id: str,
    stac: dict[str, Any],
    space_id: int | None = None,
    *,
    if_absent: bool = False,
) -> bool:
    """Insert the collection; ``if_absent``: do nothing when the id exists. True when
    inserted (a duplicate id without ``if_absent`` raises UniqueViolation)."""
    conflict = " on conflict (id) do nothing" if if_absent else ""
    row = conn.execute(
        f"insert into collections (id, stac, space_id) values (%s, %s, %s){conflict} returning id",
        (collection_id, Jsonb(stac), space_id),
    ).fetchone()
    return row is not None


def update_stac(conn: psycopg.Connection, collection_id: str, stac: dict[str, Any]) -> bool:
    """Replace the collection's document (its space stays); False: no such collection."""
    row = conn.execute(
        "update collections set stac = %s, updated_at = now() where id = %s returning id",
        (Jsonb(stac), collection_id),
    ).fetchone()
    return row is not None


def set_stac_and_space(
    conn: psycopg.Connection,
    collection_id: str,
    stac: dict[str, Any],
    space_id: int,
    *,
    only_if_changed: bool = False,
    keep_updated_at: bool = False,
) -> None:
    """Set the collection's document and space. ``only_if_changed``: leave the row alone
    (no new row version) when both are what is stored; ``keep_updated_at``: do not move
    ``updated_at`` (a collection created in the same transaction)."""
    where = " and (stac, space_id) is distinct from (%s::jsonb, %s)" if only_if_changed else ""
    params: tuple[Any, ...] = (Jsonb(stac), space_id, keep_updated_at, collection_id)
    if only_if_changed:
        params += (Jsonb(stac), space_id)
    conn.execute(
        "update collections set stac = %s, space_id = %s,"
        " updated_at = case when %s then updated_at else now() end"
        f" where id = %s{where}",
        params,
    )


def delete(conn: psycopg.Connection, collection_id: str) -> bool:
    """Delete the collection (its items, vectors, keys and mirror state go with it, by the
    foreign keys' ``on delete cascade``); False: no such collection."""
    row = conn.execute(
        "delete from collections where id = %s returning id", (collection_id,)
    ).fetchone()
    return row is not None
