"""The Fields extension (``apply_fields``) and the queryables derived from the data."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from embcat.catalog.errors import translated
from embcat.catalog.store import item_reads

# --------------------------------------------------------------------------- fields


DEFAULT_FIELDS = ("type", "stac_version", "id", "collection", "geometry", "bbox", "links", "assets")
MINIMAL_FIELDS = ("type", "stac_version", "id", "collection")


def apply_fields(item: dict[str, Any], fields: dict[str, Any] | None) -> dict[str, Any]:
    """The Fields extension.

    ``include`` given: the minimal fields (type, stac_version, id, collection) plus those
    included; excludes apply except where an include is equal or more specific. Only
    ``exclude``: everything but the excluded fields, or (when ``include`` was given as
    null/[]) the default set (type, stac_version, id, collection, geometry, bbox, links,
    assets, properties.datetime) minus the excluded. Neither: the default set.
    """
    if fields is None:
        return item
    include = [f for f in fields.get("include") or [] if f]
    exclude = [f for f in fields.get("exclude") or [] if f]
    out: dict[str, Any]
    if include:
        out = {k: item[k] for k in MINIMAL_FIELDS if k in item}
        for path in include:
            _copy_path(item, out, path.split("."))
    elif exclude and not fields.get("include_given"):
        out = json.loads(json.dumps(item))
    else:
        out = {k: item[k] for k in DEFAULT_FIELDS if k in item}
        props = item.get("properties") or {}
        out["properties"] = {
            k: props[k] for k in ("datetime", "start_datetime", "end_datetime") if k in props
        }
    for path in exclude:
        if any(inc == path or inc.startswith(path + ".") for inc in include):
            if "." not in path and isinstance(out.get(path), dict):
                continue  # a more specific include keeps its part of the object
            continue
        _drop_path(out, path.split("."))
    return out


def _copy_path(src: dict[str, Any], dst: dict[str, Any], parts: list[str]) -> None:
    head = parts[0]
    if head not in src:
        # "properties.x" may also be given as "x"
        if (
            len(parts) == 1
            and isinstance(src.get("properties"), dict)
            and head in src["properties"]
            and src is not dst
        ):
            dst.setdefault("properties", {})[head] = src["properties"][head]
        return
    if len(parts) == 1:
        dst[head] = src[head]
        return
    if isinstance(src[head], dict):
        child = dst.setdefault(head, {})
        if isinstance(child, dict):
            _copy_path(src[head], child, parts[1:])


def _drop_path(obj: dict[str, Any], parts: list[str]) -> None:
    if len(parts) == 1:
        obj.pop(parts[0], None)
    elif isinstance(obj.get(parts[0]), dict):
        _drop_path(obj[parts[0]], parts[1:])


# --------------------------------------------------------------------------- queryables

JSON_TYPES = {
    "string": "string",
    "number": "number",
    "boolean": "boolean",
    "array": "array",
    "object": "object",
}


def queryables(
    conn: psycopg.Connection, collection_id: str | None = None, sample: int = 2000
) -> dict[str, dict[str, Any]]:
    """Queryable properties derived from the data: key -> JSON schema fragment."""
    out: dict[str, dict[str, Any]] = {
        "id": {"title": "Item ID", "type": "string"},
        "collection": {"title": "Collection ID", "type": "string"},
        # self-contained (OGC API - Features - Part 5 "geometry-any"): clients such as STAC
        # Browser dereference a $ref to geojson.org, which fails offline
        "geometry": {
            "title": "Geometry",
            "format": "geometry-any",
            "x-ogc-role": "primary-geometry",
        },
        "datetime": {"title": "Acquisition time", "type": "string", "format": "date-time"},
    }
    with translated():
        rows = item_reads.property_types(conn, collection_id, sample)
    for key, typ, _count in rows:
        if key in out or typ not in JSON_TYPES:
            continue
        entry: dict[str, Any] = {"type": JSON_TYPES[typ]}
        if key in ("start_datetime", "end_datetime", "created", "updated") or key.endswith(
            ":datetime"
        ):
            entry["format"] = "date-time"
        out[key] = entry
    return out
