"""Issue 15, findings 2, 3, 4 and 18: a write stores exactly what was validated, refuses
what every later read would choke on, and never commits when it answers an error.

Each test writes into a collection of its own (a collection-scoped write key, as in the
adversarial round), then checks what is stored and that reads still answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from relhelpers import point_item


def collection_body(cid: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": cid,
        "description": "poisoned-write tests",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[-10.0, -10.0, 10.0, 10.0]]},
            "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]},
        },
        "links": [],
    }


@pytest.fixture
def target(database_url: str, make_key: Callable[..., str]) -> Iterator[tuple[str, dict]]:
    """(collection id, auth headers of a write key limited to it); dropped afterwards."""
    cid = f"poison-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "insert into collections (id, stac) values (%s, %s::jsonb)",
            (cid, json.dumps(collection_body(cid))),
        )
    secret = make_key("write", collection=cid)
    try:
        yield cid, {"Authorization": f"Bearer {secret}"}
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


def _items(database_url: str, cid: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "select id, ST_AsText(geometry), properties::text from items"
            " where collection_id = %s order by id",
            (cid,),
        ).fetchall()


def _stac(database_url: str, cid: str) -> Any:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select stac from collections where id = %s", (cid,)).fetchone()
    assert row is not None
    return row[0]


def _with_geometry(cid: str, geometry: dict[str, Any]) -> dict[str, Any]:
    item = point_item(cid, f"g-{uuid.uuid4().hex[:6]}")
    item["geometry"] = geometry
    item.pop("bbox")
    return item


UNCLOSED = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}
BOW_TIE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
LAT_100 = {"type": "Point", "coordinates": [1.0, 100.0]}
LON_HUGE = {"type": "Point", "coordinates": [1e308, 1.0]}


@pytest.mark.parametrize(
    "geometry",
    [UNCLOSED, BOW_TIE, LAT_100, LON_HUGE],
    ids=["unclosed-ring", "bow-tie", "lat-100", "lon-1e308"],
)
def test_invalid_geometry_is_refused_and_not_stored(
    rel_server: str, target: tuple[str, dict], database_url: str, geometry: dict
) -> None:
    cid, auth = target
    r = httpx.post(
        f"{rel_server}/collections/{cid}/items", json=_with_geometry(cid, geometry), headers=auth
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "InvalidInput"
    assert _items(database_url, cid) == []


def test_search_with_a_bbox_still_answers_after_a_refused_ring(
    rel_server: str, target: tuple[str, dict]
) -> None:
    cid, auth = target
    httpx.post(
        f"{rel_server}/collections/{cid}/items", json=_with_geometry(cid, UNCLOSED), headers=auth
    )
    r = httpx.get(f"{rel_server}/search", params={"bbox": "-1,-1,2,2", "limit": 5})
    assert r.status_code == 200, r.text


def test_bulk_items_refuse_an_unclosed_ring(
    rel_server: str, target: tuple[str, dict], database_url: str
) -> None:
    cid, auth = target
    good = point_item(cid, "ok-1")
    bad = {**_with_geometry(cid, UNCLOSED), "id": "bad-1"}
    r = httpx.post(
        f"{rel_server}/collections/{cid}/bulk_items",
        json={"items": {"ok-1": good, "bad-1": bad}},
        headers=auth,
    )
    assert r.status_code == 400, r.text
    assert _items(database_url, cid) == []


def test_put_item_with_a_bow_tie_leaves_the_stored_item(
    rel_server: str, target: tuple[str, dict], database_url: str
) -> None:
    cid, auth = target
    item = point_item(cid, "keep")
    assert httpx.post(f"{rel_server}/collections/{cid}/items", json=item, headers=auth).is_success
    before = _items(database_url, cid)
    r = httpx.put(
        f"{rel_server}/collections/{cid}/items/keep",
        json={**item, "geometry": BOW_TIE, "bbox": [0, 0, 1, 1]},
        headers=auth,
    )
    assert r.status_code == 400, r.text
    assert _items(database_url, cid) == before


def test_patch_item_to_latitude_100_is_refused(
    rel_server: str, target: tuple[str, dict], database_url: str
) -> None:
    cid, auth = target
    item = point_item(cid, "keep")
    assert httpx.post(f"{rel_server}/collections/{cid}/items", json=item, headers=auth).is_success
    before = _items(database_url, cid)
    r = httpx.patch(
        f"{rel_server}/collections/{cid}/items/keep",
        json={"geometry": LAT_100, "bbox": [1, 100, 1, 100]},
        headers=auth,
    )
    assert r.status_code == 400, r.text
    assert _items(database_url, cid) == before


def test_stored_geometry_is_the_validated_one(
    rel_server: str, target: tuple[str, dict], database_url: str
) -> None:
    cid, auth = target
    geometry = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    item = _with_geometry(cid, geometry)
    r = httpx.post(f"{rel_server}/collections/{cid}/items", json=item, headers=auth)
    assert r.status_code == 201, r.text
    assert _items(database_url, cid)[0][1] == "POLYGON((0 0,1 0,1 1,0 0))"


def test_put_collection_with_null_assets_is_refused(
    rel_server: str, target: tuple[str, dict], database_url: str
) -> None:
    cid, auth = target
    before = _stac(database_url, cid)
    r = httpx.put(
        f"{rel_server}/collections/{cid}",
        json={**collection_body(cid), "assets": None},
        headers=auth,
    )
    assert r.status_code == 400, r.text
    assert _stac(database_url, cid) == before
    assert httpx.get(f"{rel_server}/collections").status_code == 200


def test_collection_row_with_null_assets_still_reads(
    rel_server: str, target: tuple[str, dict], database_url: str
) -> None:
    """A row written before the checks (or planted by a mirror source) does not break the
    collection list for everyone."""
    cid, _ = target
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "update collections set stac = stac || '{\"assets\": null}'::jsonb where id = %s",
            (cid,),
        )
    assert httpx.get(f"{rel_server}/collections").status_code == 200
    assert httpx.get(f"{rel_server}/collections/{cid}").status_code == 200


def _raw_item(cid: str, item_id: str, number_text: str) -> bytes:
    body = json.dumps(point_item(cid, item_id))
    return body.replace('"properties": {', '"properties": {"big": ' + number_text + ", ").encode()


@pytest.mark.parametrize(
    "number",
    ["1" + "0" * 400, "1e400", "-1e400"],
    ids=["400-digit-integer", "float-overflow", "negative-overflow"],
)
def test_property_number_out_of_range_is_refused_and_not_stored(
    rel_server: str, target: tuple[str, dict], database_url: str, number: str
) -> None:
    cid, auth = target
    r = httpx.post(
        f"{rel_server}/collections/{cid}/items",
        content=_raw_item(cid, "big", number),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert _items(database_url, cid) == []
    assert httpx.get(f"{rel_server}/collections/{cid}/items", params={"fields": "id"}).is_success


def test_collection_number_out_of_range_is_refused(
    rel_server: str, target: tuple[str, dict], database_url: str
) -> None:
    cid, auth = target
    before = _stac(database_url, cid)
    body = json.dumps(collection_body(cid))[:-1] + ', "x": 1' + "0" * 400 + "}"
    r = httpx.put(
        f"{rel_server}/collections/{cid}",
        content=body.encode(),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert _stac(database_url, cid) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/collections/{cid}/items"),
        ("PUT", "/collections/{cid}/items/x"),
        ("PATCH", "/collections/{cid}/items/x"),
        ("PUT", "/collections/{cid}"),
        ("PATCH", "/collections/{cid}"),
        ("POST", "/collections/{cid}/bulk_items"),
    ],
)
def test_empty_body_is_a_400(
    rel_server: str, target: tuple[str, dict], method: str, path: str
) -> None:
    cid, auth = target
    r = httpx.request(method, rel_server + path.format(cid=cid), headers=auth)
    assert r.status_code == 400, r.text


def test_bulk_item_that_is_not_an_object_is_a_400(
    rel_server: str, target: tuple[str, dict], database_url: str
) -> None:
    cid, auth = target
    r = httpx.post(
        f"{rel_server}/collections/{cid}/bulk_items", json={"items": {"a": []}}, headers=auth
    )
    assert r.status_code == 400, r.text
    assert _items(database_url, cid) == []
