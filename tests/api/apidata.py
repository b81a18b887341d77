"""Generated, seeded STAC items and collections for the API and search tests."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg


def make_item(collection_id: str, n: int, rng: random.Random) -> dict[str, Any]:
    lon = rng.uniform(-10.0, 10.0)
    lat = rng.uniform(40.0, 50.0)
    size = 0.01
    when = datetime(2021, 1, 1, tzinfo=UTC) + timedelta(hours=n * 7)
    coords = [
        [lon, lat],
        [lon + size, lat],
        [lon + size, lat + size],
        [lon, lat + size],
        [lon, lat],
    ]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": f"item-{n:04d}",
        "collection": collection_id,
        "geometry": {"type": "Polygon", "coordinates": [coords]},
        "bbox": [lon, lat, lon + size, lat + size],
        "properties": {
            "datetime": when.isoformat().replace("+00:00", "Z"),
            "eo:cloud_cover": round(rng.uniform(0, 100), 1),
            "platform": rng.choice(["sentinel-2a", "sentinel-2b", "landsat-8"]),
            "keywords": rng.sample(["forest", "water", "urban", "crop"], 2),
            "title": f"Chip {n}",
        },
        "assets": {
            "embeddings": {
                "href": f"/collections/{collection_id}/items/item-{n:04d}/embedding",
                "type": "application/x-npy",
                "roles": ["data"],
            }
        },
        "links": [],
    }


def collection_json(collection_id: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": collection_id,
        "title": f"Test collection {collection_id}",
        "description": "Generated chips for API tests",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [[-10.0, 40.0, 10.01, 50.01]]},
            "temporal": {"interval": [["2021-01-01T00:00:00Z", "2022-01-01T00:00:00Z"]]},
        },
        "links": [],
    }


def insert_collection(conn: psycopg.Connection, stac: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO collections (id, stac) VALUES (%s, %s::jsonb)", (stac["id"], json.dumps(stac))
    )


def insert_items(conn: psycopg.Connection, items: list[dict[str, Any]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO items (collection_id, id, geometry, bbox, datetime, properties, assets,"
            " links) VALUES (%s, %s, ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326), %s,"
            " %s::timestamptz, %s::jsonb, %s::jsonb, %s::jsonb)",
            [
                (
                    it["collection"],
                    it["id"],
                    json.dumps(it["geometry"]),
                    it["bbox"],
                    it["properties"]["datetime"],
                    json.dumps(it["properties"]),
                    json.dumps(it["assets"]),
                    json.dumps(it["links"]),
                )
                for it in items
            ],
        )
