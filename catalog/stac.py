"""Rows of the catalogue as STAC JSON, and the shared read helpers.

The writes (validation first, then the transaction endpoints' INSERT/UPDATE/DELETE) are
catalog.stac_write's; their names are re-exported here.

``item_to_stac`` and ``collection_to_stac`` turn stored rows into STAC 1.1.0 documents:
they add the generated links (self, parent, collection, root, items) and make
root-relative hrefs (``/collections/...``) absolute with the given base URL. Exports and
the API use the same functions so that every surface serves the same JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import psycopg

from embcat.catalog.errors import NotFound, translated
from embcat.catalog.item_shape import (
    DERIVED_FROM,
    EMB_SOURCE_DATA,
    extension_schemas,
    source_uri,
    stac_version_for,
)
from embcat.catalog.item_shape import EMB_SCHEMA as EMB_SCHEMA
from embcat.catalog.item_shape import EMB_STAC_VERSION as EMB_STAC_VERSION
from embcat.catalog.item_shape import EXTENSION_SCHEMAS as EXTENSION_SCHEMAS
from embcat.catalog.item_shape import GENERATED_RELS as GENERATED_RELS
from embcat.catalog.item_shape import STAC_VERSION as STAC_VERSION
from embcat.catalog.stac_write import (
    COLLECTION_ID,
    INT_RANGE,
    ITEM_ID,
    MAX_JSON_DEPTH,
    ItemRecord,
    check_json_values,
    collection_exists,
    delete_collection,
    delete_item,
    insert_collection,
    insert_items,
    update_collection,
    update_item,
    validate_collection,
    validate_item,
)
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import items as store_items
from embcat.catalog.store.items import ITEM_COLUMNS as ITEM_COLUMNS

GEOJSON = "application/geo+json"
JSON = "application/json"


# Root-relative hrefs that this server serves (made absolute with the base URL); any other
# href is the publisher's and is served as given.
SERVED_PREFIXES = ("/collections/", "/search")
# Links to source imagery: a path of the encoding site becomes a file:// URI.
SOURCE_RELS = {DERIVED_FROM, EMB_SOURCE_DATA, "via"}


def _q(value: str) -> str:
    return quote(value, safe="")


def absolute(href: str, base_url: str) -> str:
    """``/collections/x`` -> ``{base_url}/collections/x`` (paths this server serves);
    other hrefs unchanged."""
    if href.startswith(SERVED_PREFIXES) or href == "/":
        return base_url.rstrip("/") + href
    return href


def collection_url(base_url: str, collection_id: str) -> str:
    return f"{base_url.rstrip('/')}/collections/{_q(collection_id)}"


def item_url(base_url: str, collection_id: str, item_id: str) -> str:
    return f"{collection_url(base_url, collection_id)}/items/{_q(item_id)}"


def _stored_links(links: Iterable[Mapping[str, Any]] | None, base_url: str) -> list[dict]:
    out = []
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, Mapping) or link.get("rel") in GENERATED_RELS:
            continue
        link = dict(link)
        href = link.get("href")
        if isinstance(href, str):
            if link.get("rel") in SOURCE_RELS and not href.startswith(SERVED_PREFIXES):
                href = source_uri(href) or href  # stored before migration 0013
            link["href"] = absolute(href, base_url)
        out.append(link)
    return out


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def item_to_stac(row: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """A STAC Item from an items row (keys: collection_id, id, geometry, bbox, properties,
    assets, links); geometry may be GeoJSON text or a dict."""
    cid, iid = row["collection_id"], row["id"]
    properties = dict(_loads(row["properties"]) or {})
    assets: dict[str, Any] = {}
    for key, asset in (_loads(row["assets"]) or {}).items():
        asset = dict(asset)
        if isinstance(asset.get("href"), str):
            asset["href"] = absolute(asset["href"], base_url)
        assets[key] = asset
    base = base_url.rstrip("/")
    links = [
        {"rel": "self", "type": GEOJSON, "title": f"Item {iid}", "href": item_url(base, cid, iid)},
        {
            "rel": "parent",
            "type": JSON,
            "title": f"Collection {cid}",
            "href": collection_url(base, cid),
        },
        {
            "rel": "collection",
            "type": JSON,
            "title": f"Collection {cid}",
            "href": collection_url(base, cid),
        },
        {"rel": "root", "type": JSON, "title": "Catalogue root", "href": base + "/"},
    ]
    links.extend(_stored_links(_loads(row.get("links")), base))
    ext_sources: list[Mapping[str, Any]] = [properties, *assets.values()]
    extensions = extension_schemas(*ext_sources)
    return {
        "type": "Feature",
        "stac_version": stac_version_for(extensions),
        "stac_extensions": extensions,
        "id": iid,
        "collection": cid,
        "geometry": _loads(row["geometry"]),
        "bbox": [float(v) for v in row["bbox"]],
        "properties": properties,
        "links": links,
        "assets": assets,
    }


def collection_to_stac(row: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """A STAC Collection from a collections row (keys: id, stac)."""
    stored = dict(_loads(row["stac"]) or {})
    cid = row["id"]
    base = base_url.rstrip("/")
    extensions = list(stored.get("stac_extensions") or [])
    out: dict[str, Any] = {
        "type": "Collection",
        "stac_version": stac_version_for(extensions),
        "stac_extensions": extensions,
        "id": cid,
        "description": stored.get("description") or cid,
        "license": stored.get("license") or "other",
        "extent": stored.get("extent")
        or {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [[None, None]]},
        },
    }
    for key, value in stored.items():
        if key not in out and key not in ("links", "type", "stac_version", "id"):
            out[key] = value
    if "assets" in out:
        # Rows written before the collection checks (or planted by a mirror source) may
        # hold anything here: serve only asset objects, never fail the read.
        stored_assets = out["assets"] if isinstance(out["assets"], Mapping) else {}
        out["assets"] = {
            k: {**a, "href": absolute(a["href"], base)} if isinstance(a.get("href"), str) else a
            for k, a in stored_assets.items()
            if isinstance(a, Mapping)
        }
    links = [
        {
            "rel": "self",
            "type": JSON,
            "title": f"Collection {cid}",
            "href": collection_url(base, cid),
        },
        {"rel": "parent", "type": JSON, "title": "Catalogue root", "href": base + "/"},
        {"rel": "root", "type": JSON, "title": "Catalogue root", "href": base + "/"},
        {
            "rel": "items",
            "type": GEOJSON,
            "title": "Items",
            "href": collection_url(base, cid) + "/items",
        },
    ]
    links.extend(_stored_links(stored.get("links"), base))
    out["links"] = links
    return out


def get_item_row(conn: psycopg.Connection, collection_id: str, item_id: str) -> dict[str, Any]:
    """The items row of one item (NotFound names what is missing)."""
    with translated():
        row = store_items.get_row(conn, collection_id, item_id)
        if row is None:
            if not collection_exists(conn, collection_id):
                raise NotFound(f"collection {collection_id!r} does not exist")
            raise NotFound(f"item {item_id!r} does not exist in collection {collection_id!r}")
    return row


def get_item(
    conn: psycopg.Connection, collection_id: str, item_id: str, base_url: str
) -> dict[str, Any]:
    return item_to_stac(get_item_row(conn, collection_id, item_id), base_url)


def get_collection_row(conn: psycopg.Connection, collection_id: str) -> dict[str, Any]:
    """The collections row (id, stac, space_id) as a mapping; NotFound if absent."""
    with translated():
        row = store_collections.get(conn, collection_id)
    if row is None:
        raise NotFound(f"collection {collection_id!r} does not exist")
    return row.mapping()


def get_collection(conn: psycopg.Connection, collection_id: str, base_url: str) -> dict[str, Any]:
    return collection_to_stac(get_collection_row(conn, collection_id), base_url)


def list_collection_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with translated():
        return [row.mapping() for row in store_collections.list_rows(conn)]


__all__ = [
    "COLLECTION_ID",
    "EMB_SCHEMA",
    "EMB_STAC_VERSION",
    "EXTENSION_SCHEMAS",
    "GENERATED_RELS",
    "GEOJSON",
    "ITEM_COLUMNS",
    "JSON",
    "SERVED_PREFIXES",
    "SOURCE_RELS",
    "STAC_VERSION",
    "absolute",
    "collection_to_stac",
    "collection_url",
    "get_collection",
    "get_collection_row",
    "get_item",
    "get_item_row",
    "item_to_stac",
    "item_url",
    "list_collection_rows",
    "source_uri",
    "stac_version_for",
    "INT_RANGE",
    "ITEM_ID",
    "MAX_JSON_DEPTH",
    "ItemRecord",
    "check_json_values",
    "collection_exists",
    "delete_collection",
    "delete_item",
    "insert_collection",
    "insert_items",
    "update_collection",
    "update_item",
    "validate_collection",
    "validate_item",
]
