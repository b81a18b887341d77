"""Collections as such: the id rule, reserving an empty collection, listing and deleting.

A collection is normally created by its first publish, which also fixes its embedding
space. :func:`reserve_collection` creates it ahead of that, empty and without a space
(``space_id`` is NULL), so that an administrator can hand out a write key limited to it
(``embcat keys create hpc --scope write --collection new-run``) before any data exists;
the first publish into it then sets its space, title and extent.

:func:`delete_collection` removes a collection with everything that belongs to it: its
items and vectors, tombstones, publish records, keys limited to it and the state of a
mirror that fills it (all through ``ON DELETE CASCADE``). Embedding spaces stay: other
collections may share them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from embcat.catalog.errors import Conflict, InvalidInput, NotFound, translated
from embcat.catalog.store import collections as store_collections

# The same rule as the check constraint on collections.id (migration 0001).
COLLECTION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
_ID_RE = re.compile(COLLECTION_ID_PATTERN)


def validate_collection_id(collection_id: str | None) -> str:
    """``collection_id`` if it is a valid collection id, else :class:`InvalidInput`."""
    if collection_id is None or collection_id == "":
        raise InvalidInput(
            "the collection id is empty; give one (letters, digits, '.', '_' or '-')"
            " or leave --collection out to use the run's default"
        )
    if not _ID_RE.fullmatch(collection_id):
        raise InvalidInput(
            f"invalid collection id {collection_id!r}: use 1 to 255 letters, digits, '.',"
            " '_' or '-', starting with a letter or digit (e.g. 'sentinel2-mosaiks')"
        )
    return collection_id


@dataclass(frozen=True)
class CollectionInfo:
    id: str
    title: str | None
    items: int
    space: str | None  # "encoder version (dims d, metric)", None while reserved
    created_at: datetime

    @property
    def reserved(self) -> bool:
        return self.space is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "items": self.items,
            "space": self.space,
            "reserved": self.reserved,
            "created_at": self.created_at.isoformat(),
        }


def reserved_stac(collection_id: str, title: str | None, description: str | None) -> dict:
    """The STAC document of a reserved (empty) collection; the first publish replaces it."""
    import pystac

    open_interval: list[datetime | None] = [None, None]
    coll = pystac.Collection(
        id=collection_id,
        description=description or "Reserved for embeddings not yet published.",
        extent=pystac.Extent(
            pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
            pystac.TemporalExtent([open_interval]),
        ),
        title=title,
        license="other",
    )
    doc = coll.to_dict(include_self_link=False)
    doc["links"] = []
    doc["embcat:reserved"] = True
    return doc


def reserve_collection(
    conn: psycopg.Connection,
    collection_id: str,
    *,
    title: str | None = None,
    description: str | None = None,
) -> None:
    """Create an empty collection without a space; Conflict if the id exists."""
    validate_collection_id(collection_id)
    with translated():
        inserted = store_collections.insert(
            conn, collection_id, reserved_stac(collection_id, title, description), if_absent=True
        )
    if not inserted:
        raise Conflict(f"collection {collection_id!r} already exists")


def list_collections(conn: psycopg.Connection) -> list[CollectionInfo]:
    """Every collection with its item count and space, by id."""
    with translated():
        rows = store_collections.summaries(conn)
    return [
        CollectionInfo(
            id=r.id,
            title=r.title,
            created_at=r.created_at,
            items=r.items,
            space=None
            if r.encoder_name is None
            else f"{r.encoder_name} {r.encoder_version} ({r.dimensions}d, {r.metric})",
        )
        for r in rows
    ]


def delete_collection(conn: psycopg.Connection, collection_id: str) -> dict[str, int]:
    """Delete a collection and what belongs to it; NotFound if absent. Returns counts."""
    with translated():
        if store_collections.get(conn, collection_id, lock="update") is None:
            raise NotFound(f"collection {collection_id!r} does not exist")
        items, keys, mirrors = store_collections.dependents(conn, collection_id)
        store_collections.delete(conn, collection_id)
    return {"items": items, "keys": keys, "mirrors": mirrors}
