"""The export read back by stac-geoparquet: the default (full) profile of a published
collection turns back into the STAC items the API serves (issue 16).

The collection is made as a user makes one (a real mosaiks encode of a seeded GeoTIFF,
published by the real publish job); the export is fetched over HTTP and read with
``stac_geoparquet.arrow.stac_table_to_items``, the library's own reader.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pyarrow.parquet as pq
import pytest
import shapely.geometry
import stac_geoparquet.arrow
from metadata_fixtures import Published, encode_and_publish

from embcat.catalog.settings import DatabaseSettings


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory, db_settings: DatabaseSettings
) -> Iterator[Published]:
    cid = f"readback-{uuid.uuid4().hex[:8]}"
    out = encode_and_publish(tmp_path_factory.mktemp("readback"), db_settings, cid)
    yield out
    with psycopg.connect(db_settings.database_url) as conn:
        conn.execute("DELETE FROM collections WHERE id = %s", (cid,))


@pytest.fixture(scope="module")
def api_items(live_server: str, published: Published) -> dict[str, dict[str, Any]]:
    r = httpx.get(
        f"{live_server}/collections/{published.collection_id}/items",
        params={"limit": 100},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    features = r.json()["features"]
    assert len(features) == published.items > 1
    return {f["id"]: f for f in features}


@pytest.fixture(scope="module")
def read_back(live_server: str, published: Published) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{live_server}/collections/{published.collection_id}/export", timeout=60)
    assert r.status_code == 200, r.text
    table = pq.read_table(io.BytesIO(r.content)).drop_columns(["embedding"])
    items = list(stac_geoparquet.arrow.stac_table_to_items(table))
    return {item["id"]: item for item in items}


def _instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_read_back_has_the_api_items_ids(
    read_back: dict[str, dict[str, Any]], api_items: dict[str, dict[str, Any]]
) -> None:
    assert sorted(read_back) == sorted(api_items)


def test_read_back_items_are_stac_features_of_the_collection(
    read_back: dict[str, dict[str, Any]], api_items: dict[str, dict[str, Any]]
) -> None:
    for iid, item in read_back.items():
        served = api_items[iid]
        assert item["type"] == "Feature"
        assert item["collection"] == served["collection"]
        assert item["stac_version"] == served["stac_version"]
        assert sorted(item["stac_extensions"]) == sorted(served["stac_extensions"])


def test_read_back_geometry_and_bbox_equal_the_api_items(
    read_back: dict[str, dict[str, Any]], api_items: dict[str, dict[str, Any]]
) -> None:
    for iid, item in read_back.items():
        served = api_items[iid]
        got = shapely.geometry.shape(item["geometry"])
        want = shapely.geometry.shape(served["geometry"])
        assert got.equals_exact(want, tolerance=1e-12), iid
        assert list(item["bbox"]) == pytest.approx(served["bbox"], abs=1e-12)


def test_read_back_datetimes_equal_the_api_items(
    read_back: dict[str, dict[str, Any]], api_items: dict[str, dict[str, Any]]
) -> None:
    for iid, item in read_back.items():
        served = api_items[iid]["properties"]
        for key in ("datetime", "start_datetime", "end_datetime"):
            assert _instant(item["properties"].get(key)) == _instant(served.get(key)), key


def _native(value: Any) -> bool:
    """A value the export writes as a typed column (string, number, bool, list of strings)."""
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, str | int | float | bool)


def _properties(item: dict[str, Any], native: bool) -> dict[str, Any]:
    times = {"datetime", "start_datetime", "end_datetime"}
    return {k: v for k, v in item["properties"].items() if k not in times and _native(v) == native}


def test_read_back_typed_properties_equal_the_api_items(
    read_back: dict[str, dict[str, Any]], api_items: dict[str, dict[str, Any]]
) -> None:
    for iid, item in read_back.items():
        served = _properties(api_items[iid], native=True)
        assert served, "the published items have string/number properties"
        assert {k: item["properties"].get(k) for k in served} == served, iid


def test_read_back_object_and_array_properties_equal_the_api_items(
    read_back: dict[str, dict[str, Any]], api_items: dict[str, dict[str, Any]]
) -> None:
    for iid, item in read_back.items():
        served = _properties(api_items[iid], native=False)
        assert served, "the published items have object and number-array properties"
        assert {k: item["properties"].get(k) for k in served} == served, iid


def test_read_back_assets_and_links_equal_the_api_items(
    read_back: dict[str, dict[str, Any]], api_items: dict[str, dict[str, Any]]
) -> None:
    for iid, item in read_back.items():
        served = api_items[iid]
        assert item["assets"] == served["assets"], iid
        source = [link for link in served["links"] if link["rel"] == "derived_from"]
        assert [link for link in item["links"] if link["rel"] == "derived_from"] == source
