"""Rows of the catalogue as STAC JSON, and the shared read helpers.

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
from psycopg import sql
from psycopg.rows import dict_row

from catalog.errors import NotFound, translated

STAC_VERSION = "1.1.0"
GEOJSON = "application/geo+json"
JSON = "application/json"

# Schemas of the extensions whose fields are recognised by prefix (items carry no stored
# stac_extensions list, so it is derived from the fields they hold).
EXTENSION_SCHEMAS = {
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "emb": "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json",
    "mlm": "https://stac-extensions.github.io/mlm/v1.4.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "view": "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
}

# Items: the SELECT list every reader uses (the row mapping item_to_stac expects).
ITEM_COLUMNS = sql.SQL(
    "i.collection_id, i.id, ST_AsGeoJSON(i.geometry, 15)::text AS geometry, i.bbox,"
    " i.properties, i.assets, i.links"
)

GENERATED_RELS = {"self", "root", "parent", "collection", "items"}


def _q(value: str) -> str:
    return quote(value, safe="")


def absolute(href: str, base_url: str) -> str:
    """``/collections/x`` -> ``{base_url}/collections/x``; other hrefs unchanged."""
    if href.startswith("/") and not href.startswith("//"):
        return base_url.rstrip("/") + href
    return href


def collection_url(base_url: str, collection_id: str) -> str:
    return f"{base_url.rstrip('/')}/collections/{_q(collection_id)}"


def item_url(base_url: str, collection_id: str, item_id: str) -> str:
    return f"{collection_url(base_url, collection_id)}/items/{_q(item_id)}"


def _extension_schemas(*objects: Mapping[str, Any]) -> list[str]:
    found: set[str] = set()
    for obj in objects:
        for key in obj:
            prefix, sep, _ = key.partition(":")
            if sep and prefix in EXTENSION_SCHEMAS:
                found.add(EXTENSION_SCHEMAS[prefix])
    return sorted(found)


def _stored_links(links: Iterable[Mapping[str, Any]] | None, base_url: str) -> list[dict]:
    out = []
    for link in links or []:
        if link.get("rel") in GENERATED_RELS:
            continue
        link = dict(link)
        if isinstance(link.get("href"), str):
            link["href"] = absolute(link["href"], base_url)
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
        {"rel": "self", "type": GEOJSON, "href": item_url(base, cid, iid)},
        {"rel": "parent", "type": JSON, "href": collection_url(base, cid)},
        {"rel": "collection", "type": JSON, "href": collection_url(base, cid)},
        {"rel": "root", "type": JSON, "href": base + "/"},
    ]
    links.extend(_stored_links(_loads(row.get("links")), base))
    ext_sources: list[Mapping[str, Any]] = [properties, *assets.values()]
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": _extension_schemas(*ext_sources),
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
    out: dict[str, Any] = {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": stored.get("stac_extensions", []),
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
        out["assets"] = {
            k: {**a, "href": absolute(a["href"], base)} if isinstance(a.get("href"), str) else a
            for k, a in out["assets"].items()
        }
    links = [
        {"rel": "self", "type": JSON, "href": collection_url(base, cid)},
        {"rel": "parent", "type": JSON, "href": base + "/"},
        {"rel": "root", "type": JSON, "href": base + "/"},
        {"rel": "items", "type": GEOJSON, "href": collection_url(base, cid) + "/items"},
    ]
    links.extend(_stored_links(stored.get("links"), base))
    out["links"] = links
    return out


def get_item_row(conn: psycopg.Connection, collection_id: str, item_id: str) -> dict[str, Any]:
    """The items row of one item (NotFound names what is missing)."""
    query = sql.SQL("SELECT {} FROM items i WHERE i.collection_id = %s AND i.id = %s").format(
        ITEM_COLUMNS
    )
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, (collection_id, item_id)).fetchone()
        if row is None:
            if not collection_exists(conn, collection_id):
                raise NotFound(f"collection {collection_id!r} does not exist")
            raise NotFound(f"item {item_id!r} does not exist in collection {collection_id!r}")
    return row


def get_item(
    conn: psycopg.Connection, collection_id: str, item_id: str, base_url: str
) -> dict[str, Any]:
    return item_to_stac(get_item_row(conn, collection_id, item_id), base_url)


def collection_exists(conn: psycopg.Connection, collection_id: str) -> bool:
    with translated():
        return (
            conn.execute("SELECT 1 FROM collections WHERE id = %s", (collection_id,)).fetchone()
            is not None
        )


def get_collection_row(conn: psycopg.Connection, collection_id: str) -> dict[str, Any]:
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT id, stac, space_id FROM collections WHERE id = %s", (collection_id,)
        ).fetchone()
    if row is None:
        raise NotFound(f"collection {collection_id!r} does not exist")
    return row


def get_collection(conn: psycopg.Connection, collection_id: str, base_url: str) -> dict[str, Any]:
    return collection_to_stac(get_collection_row(conn, collection_id), base_url)


def list_collection_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT id, stac, space_id FROM collections ORDER BY id").fetchall()
