"""Helpers of the reliability suite (imported by its conftest and tests; a unique module
name, so that it never clashes with the other test folders' conftest modules)."""

from __future__ import annotations

from typing import Any

import psycopg

N_ITEMS = 120
DIMS = 8
TABLES = (
    "collections",
    "items",
    "embeddings",
    "embedding_spaces",
    "item_tombstones",
    "publishes",
    "api_keys",
)


def vector_connection(url: str) -> psycopg.Connection:
    from pgvector.psycopg import register_vector

    conn = psycopg.connect(url)
    register_vector(conn)
    return conn


def table_counts(url: str) -> dict[str, int]:
    """Row count of every catalogue table (an unknown table fails the test)."""
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES}


def api_settings_for(url: str, **overrides: Any) -> Any:
    from embcat.api.settings import ApiSettings

    values: dict[str, Any] = {"database_url": url, "db_pool_max": 4, "max_body_bytes": 256 * 1024}
    values.update(overrides)
    return ApiSettings(**values)


def point_item(collection_id: str, item_id: str, lon: float = 1.0, lat: float = 1.0) -> dict:
    """A minimal valid STAC item (a point) for write requests."""
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": collection_id,
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "bbox": [lon, lat, lon, lat],
        "properties": {"datetime": "2024-02-01T00:00:00Z"},
        "assets": {},
        "links": [],
    }
