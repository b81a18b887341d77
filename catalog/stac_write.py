"""Writes of STAC items and collections (the API's transaction endpoints): validate
everything first (``validate_item``, ``validate_collection``: InvalidInput names the
fault), then write in the caller's transaction. Reads are catalog.stac's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from embcat.catalog.errors import InvalidInput, NotFound, translated
from embcat.catalog.geometry import check_item_geometry
from embcat.catalog.item_shape import GENERATED_RELS
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import items as store_items

ITEM_ID = re.compile(r"^[^/\x00-\x1f]{1,1024}$")
COLLECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


@dataclass(frozen=True)
class ItemRecord:
    """A validated item, ready for the items table."""

    collection_id: str
    id: str
    geometry: str  # GeoJSON text
    bbox: list[float]
    datetime: str | None
    start_datetime: str | None
    end_datetime: str | None
    properties: dict[str, Any]
    assets: dict[str, Any]
    links: list[dict[str, Any]]

    def stage_row(self) -> tuple[Any, ...]:
        """The item as a staged row of ``catalog.store.items`` (STAGE_COLUMNS order)."""
        return (
            self.id,
            self.geometry,
            self.bbox,
            self.datetime,
            self.start_datetime,
            self.end_datetime,
            json.dumps(self.properties),
            json.dumps(self.assets),
            json.dumps(self.links),
        )


# Numbers every reader can load back: finite doubles, integers of 64 bits (orjson, which
# the API reads JSON columns with, refuses larger ones; PostgreSQL's jsonb would keep
# them, and every later read of the row would fail).
INT_RANGE = (-(2**63), 2**64 - 1)
MAX_JSON_DEPTH = 100


def check_json_values(value: Any, what: str, depth: int = 0) -> None:
    """InvalidInput when ``value`` holds a number out of range (1e400, NaN, a 400-digit
    integer) or is nested deeper than MAX_JSON_DEPTH: checked before anything is written."""
    if depth > MAX_JSON_DEPTH:
        raise InvalidInput(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise InvalidInput(f"{what}: the integer {str(value)[:20]}... is out of range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{what}: numbers must be finite (got {value!r})")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{what}: object keys must be strings")
            if "\x00" in key:
                raise InvalidInput(f"{what}: object keys must not hold NUL characters")
            check_json_values(item, what, depth + 1)
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_json_values(item, what, depth + 1)
        return
    raise InvalidInput(f"{what}: unsupported JSON value of type {type(value).__name__}")


def _iso(value: Any, name: str) -> str | None:
    if value is None:
        return None
    from embcat.catalog.search import parse_timestamp

    return parse_timestamp(value).isoformat() if isinstance(value, str) else _bad(name)


def _bad(what: str) -> Any:
    raise InvalidInput(f"invalid {what}")


def validate_item(item: Mapping[str, Any], collection_id: str) -> ItemRecord:
    """Check a STAC Item (GeoJSON Feature) for the collection; InvalidInput names the fault."""
    if not isinstance(item, Mapping) or item.get("type") != "Feature":
        raise InvalidInput("an item must be a GeoJSON Feature (type 'Feature')")
    iid = item.get("id")
    if not isinstance(iid, str) or not ITEM_ID.match(iid):
        raise InvalidInput(f"invalid item id {iid!r}")
    if item.get("collection") not in (None, collection_id):
        raise InvalidInput(
            f"item {iid!r} names collection {item.get('collection')!r}, not {collection_id!r}"
        )
    geom = item.get("geometry")
    if not isinstance(geom, Mapping):
        raise InvalidInput(f"item {iid!r} needs a geometry (null geometries are not supported)")
    # The one rule of catalog.geometry (also publish's): closed rings, valid, 2-D, WGS84.
    geometry_text, bounds = check_item_geometry(geom, f"item {iid!r}")
    check_json_values(item, f"item {iid!r}")
    bbox = item.get("bbox")
    if bbox is None:
        bbox = bounds
    if not isinstance(bbox, list | tuple) or len(bbox) not in (4, 6):
        raise InvalidInput(f"item {iid!r}: bbox must have 4 or 6 numbers")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in bbox):
        raise InvalidInput(f"item {iid!r}: bbox must be numbers")
    bbox = [float(v) for v in bbox]
    props = item.get("properties")
    if not isinstance(props, Mapping):
        raise InvalidInput(f"item {iid!r} needs a properties object")
    props = dict(props)
    dt = _iso(props.get("datetime"), "datetime")
    start = _iso(props.get("start_datetime"), "start_datetime")
    end = _iso(props.get("end_datetime"), "end_datetime")
    if dt is None and (start is None or end is None):
        raise InvalidInput(f"item {iid!r} needs properties.datetime or start/end_datetime")
    if start is not None and end is not None and start > end:
        raise InvalidInput(f"item {iid!r}: start_datetime is after end_datetime")
    props.setdefault("datetime", None)
    assets = item.get("assets") or {}
    if not isinstance(assets, Mapping) or any(
        not isinstance(a, Mapping) or not isinstance(a.get("href"), str) for a in assets.values()
    ):
        raise InvalidInput(f"item {iid!r}: every asset needs an href")
    links = item.get("links") or []
    if not isinstance(links, list) or any(
        not isinstance(link, Mapping) or "href" not in link or "rel" not in link for link in links
    ):
        raise InvalidInput(f"item {iid!r}: every link needs rel and href")
    stored_links = [dict(link) for link in links if link.get("rel") not in GENERATED_RELS]
    return ItemRecord(
        collection_id=collection_id,
        id=iid,
        geometry=geometry_text,
        bbox=bbox,
        datetime=dt,
        start_datetime=start,
        end_datetime=end,
        properties=props,
        assets=dict(assets),
        links=stored_links,
    )


def collection_exists(conn: psycopg.Connection, collection_id: str) -> bool:
    with translated():
        return store_collections.exists(conn, collection_id)


def _require_collection(conn: psycopg.Connection, collection_id: str) -> None:
    if not collection_exists(conn, collection_id):
        raise NotFound(f"collection {collection_id!r} does not exist")


def insert_items(
    conn: psycopg.Connection, records: list[ItemRecord], *, upsert: bool = False
) -> int:
    """Insert (or upsert) validated items in the caller's transaction; Conflict on duplicates."""
    if not records:
        return 0
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise InvalidInput("the same item id appears more than once")
    by_collection: dict[str, list[tuple[Any, ...]]] = {}
    for r in records:
        by_collection.setdefault(r.collection_id, []).append(r.stage_row())
    for cid in by_collection:
        _require_collection(conn, cid)
    with translated():
        for cid, rows in by_collection.items():
            store_items.insert_rows(conn, cid, rows, upsert=upsert)
    return len(records)


def update_item(conn: psycopg.Connection, record: ItemRecord) -> None:
    _require_collection(conn, record.collection_id)
    with translated():
        found = store_items.update_row(conn, record.collection_id, record.stage_row())
    if not found:
        raise NotFound(f"item {record.id!r} does not exist in collection {record.collection_id!r}")


def delete_item(
    conn: psycopg.Connection, collection_id: str, item_id: str, *, missing_ok: bool = False
) -> None:
    _require_collection(conn, collection_id)
    with translated():
        found = store_items.delete(conn, collection_id, item_id)
    if not found and not missing_ok:
        raise NotFound(f"item {item_id!r} does not exist in collection {collection_id!r}")


def validate_collection(stac: Mapping[str, Any]) -> dict[str, Any]:
    """Check a STAC Collection; return what is stored (generated links removed)."""
    if not isinstance(stac, Mapping) or stac.get("type", "Collection") != "Collection":
        raise InvalidInput("a collection must have type 'Collection'")
    cid = stac.get("id")
    if not isinstance(cid, str) or not COLLECTION_ID.match(cid):
        raise InvalidInput(
            f"invalid collection id {cid!r} (letters, digits, '.', '_', '-'; up to 255)"
        )
    for key in ("description", "license", "extent"):
        if key not in stac:
            raise InvalidInput(f"collection {cid!r} needs {key!r}")
    extent = stac["extent"]
    if not isinstance(extent, Mapping) or "spatial" not in extent or "temporal" not in extent:
        raise InvalidInput(f"collection {cid!r}: extent needs spatial and temporal")
    _check_extent(extent, cid)
    check_json_values(stac, f"collection {cid!r}")
    for key in ("description", "license", "title"):
        if key in stac and not isinstance(stac[key], str):
            raise InvalidInput(f"collection {cid!r}: {key} must be a string")
    extensions = stac.get("stac_extensions", [])
    if not isinstance(extensions, list) or any(not isinstance(e, str) for e in extensions):
        raise InvalidInput(f"collection {cid!r}: stac_extensions must be a list of strings")
    for key in ("assets", "item_assets"):
        if key not in stac:
            continue
        assets = stac[key]
        if not isinstance(assets, Mapping) or any(
            not isinstance(a, Mapping) for a in assets.values()
        ):
            raise InvalidInput(f"collection {cid!r}: {key} must be an object of objects")
    if "assets" in stac and any(
        not isinstance(a.get("href"), str) for a in stac["assets"].values()
    ):
        raise InvalidInput(f"collection {cid!r}: every asset needs an href")
    links = stac.get("links") or []
    if not isinstance(links, list) or any(
        not isinstance(link, Mapping)
        or not isinstance(link.get("href"), str)
        or not isinstance(link.get("rel"), str)
        for link in links
    ):
        raise InvalidInput(f"collection {cid!r}: every link needs rel and href (strings)")
    out = dict(stac)
    out["type"] = "Collection"
    out["links"] = [
        dict(link)
        for link in (stac.get("links") or [])
        if isinstance(link, Mapping) and link.get("rel") not in GENERATED_RELS
    ]
    return out


def _check_extent(extent: Mapping[str, Any], cid: str) -> None:
    spatial, temporal = extent["spatial"], extent["temporal"]
    boxes = spatial.get("bbox") if isinstance(spatial, Mapping) else None
    if (
        not isinstance(boxes, list)
        or not boxes
        or any(
            not isinstance(b, list)
            or len(b) not in (4, 6)
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in b)
            for b in boxes
        )
    ):
        raise InvalidInput(
            f"collection {cid!r}: extent.spatial.bbox must be a list of 4- or 6-number boxes"
        )
    intervals = temporal.get("interval") if isinstance(temporal, Mapping) else None
    if (
        not isinstance(intervals, list)
        or not intervals
        or any(
            not isinstance(iv, list)
            or len(iv) != 2
            or any(v is not None and not isinstance(v, str) for v in iv)
            for iv in intervals
        )
    ):
        raise InvalidInput(
            f"collection {cid!r}: extent.temporal.interval must be a list of"
            " [start, end] pairs (RFC 3339 strings or null)"
        )
    for iv in intervals:
        for v in iv:
            if v is not None:
                _iso(v, f"extent interval of collection {cid!r}")


def insert_collection(conn: psycopg.Connection, stac: Mapping[str, Any]) -> str:
    """Create a collection (no embedding space until vectors are published)."""
    stored = validate_collection(stac)
    with translated():
        store_collections.insert(conn, stored["id"], stored)
    return str(stored["id"])


def update_collection(
    conn: psycopg.Connection, collection_id: str, stac: Mapping[str, Any]
) -> None:
    stored = validate_collection(stac)
    if stored["id"] != collection_id:
        raise InvalidInput(
            f"the body's id {stored['id']!r} differs from the path's {collection_id!r}"
        )
    with translated():
        found = store_collections.update_stac(conn, collection_id, stored)
    if not found:
        raise NotFound(f"collection {collection_id!r} does not exist")


def delete_collection(conn: psycopg.Connection, collection_id: str) -> None:
    with translated():
        found = store_collections.delete(conn, collection_id)
    if not found:
        raise NotFound(f"collection {collection_id!r} does not exist")
