"""Transactions and bulk items behind API keys with the write scope."""

from __future__ import annotations

import random

import httpx
import psycopg
import pytest
from apidata import collection_json, make_item

from embcat.catalog.keys import create_key, revoke_key


@pytest.fixture(scope="module")
def writer(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        _, secret = create_key(conn, "tx-writer", ["write"])
    return secret


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_create_collection_without_key_is_401(live_server: str, new_collection_id) -> None:
    r = httpx.post(live_server + "/collections", json=collection_json(new_collection_id()))
    assert r.status_code == 401
    assert r.json()["code"] == "Unauthorized"


def test_read_scope_key_cannot_write(live_server, database_url, new_collection_id) -> None:
    with psycopg.connect(database_url) as conn:
        _, secret = create_key(conn, "reader", ["read"])
    r = httpx.post(
        live_server + "/collections",
        json=collection_json(new_collection_id()),
        headers={"X-API-Key": secret},
    )
    assert r.status_code == 403


def test_revoked_key_is_401(live_server, database_url, new_collection_id) -> None:
    with psycopg.connect(database_url) as conn:
        key_id, secret = create_key(conn, "gone", ["write"])
        revoke_key(conn, key_id)
    body = collection_json(new_collection_id())
    r = httpx.post(live_server + "/collections", json=body, headers=auth(secret))
    assert r.status_code == 401


def test_item_lifecycle_create_update_delete(live_server, writer, new_collection_id) -> None:
    cid = new_collection_id()
    r = httpx.post(live_server + "/collections", json=collection_json(cid), headers=auth(writer))
    assert r.status_code == 201, r.text
    item = make_item(cid, 1, random.Random(1))
    r = httpx.post(f"{live_server}/collections/{cid}/items", json=item, headers=auth(writer))
    assert r.status_code == 201, r.text
    item["properties"]["platform"] = "changed"
    url = f"{live_server}/collections/{cid}/items/{item['id']}"
    assert httpx.put(url, json=item, headers=auth(writer)).status_code == 204
    assert httpx.get(url).json()["properties"]["platform"] == "changed"
    assert httpx.delete(url, headers=auth(writer)).status_code == 204
    assert httpx.get(url).status_code == 404


def test_duplicate_item_is_409(live_server, writer, new_collection_id) -> None:
    cid = new_collection_id()
    httpx.post(live_server + "/collections", json=collection_json(cid), headers=auth(writer))
    item = make_item(cid, 2, random.Random(2))
    url = f"{live_server}/collections/{cid}/items"
    assert httpx.post(url, json=item, headers=auth(writer)).status_code == 201
    r = httpx.post(url, json=item, headers=auth(writer))
    assert r.status_code == 409
    assert r.json()["code"] == "Conflict"


def test_item_without_datetime_is_400_and_not_written(
    live_server, writer, new_collection_id
) -> None:
    cid = new_collection_id()
    httpx.post(live_server + "/collections", json=collection_json(cid), headers=auth(writer))
    item = make_item(cid, 3, random.Random(3))
    item["properties"]["datetime"] = None
    r = httpx.post(f"{live_server}/collections/{cid}/items", json=item, headers=auth(writer))
    assert r.status_code == 400
    assert httpx.get(f"{live_server}/collections/{cid}/items/{item['id']}").status_code == 404


def test_bulk_items_insert_all_or_nothing(live_server, writer, new_collection_id) -> None:
    cid = new_collection_id()
    httpx.post(live_server + "/collections", json=collection_json(cid), headers=auth(writer))
    rng = random.Random(4)
    items = {it["id"]: it for it in (make_item(cid, n, rng) for n in range(5))}
    url = f"{live_server}/collections/{cid}/bulk_items"
    r = httpx.post(url, json={"items": items, "method": "insert"}, headers=auth(writer))
    assert r.status_code == 200, r.text
    bad = dict(items)
    bad["item-0009"] = make_item(cid, 9, rng)
    r = httpx.post(url, json={"items": bad, "method": "insert"}, headers=auth(writer))
    assert r.status_code == 409
    got = httpx.get(f"{live_server}/collections/{cid}/items", params={"limit": 50}).json()
    assert len(got["features"]) == 5


def test_collection_scoped_key_cannot_touch_other_collection(
    live_server, writer, database_url, new_collection_id
) -> None:
    mine, other = new_collection_id(), new_collection_id()
    for cid in (mine, other):
        httpx.post(live_server + "/collections", json=collection_json(cid), headers=auth(writer))
    with psycopg.connect(database_url) as conn:
        _, scoped = create_key(conn, "scoped", ["write"], collection_id=mine)
    rng = random.Random(6)
    r1 = httpx.post(
        f"{live_server}/collections/{mine}/items",
        json=make_item(mine, 1, rng),
        headers=auth(scoped),
    )
    r2 = httpx.post(
        f"{live_server}/collections/{other}/items",
        json=make_item(other, 1, rng),
        headers=auth(scoped),
    )
    assert (r1.status_code, r2.status_code) == (201, 403)


def test_item_with_a_time_range_is_served_with_null_datetime(
    live_server, writer, new_collection_id
) -> None:
    """STAC requires ``datetime`` on every item, null when a start/end range is given."""
    cid = new_collection_id()
    r = httpx.post(live_server + "/collections", json=collection_json(cid), headers=auth(writer))
    assert r.status_code == 201, r.text
    item = make_item(cid, 1, random.Random(3))
    item["properties"].update(
        datetime=None,
        start_datetime="2021-03-01T00:00:00Z",
        end_datetime="2021-03-31T23:59:59Z",
    )
    r = httpx.post(f"{live_server}/collections/{cid}/items", json=item, headers=auth(writer))
    assert r.status_code == 201, r.text
    served = [
        httpx.get(f"{live_server}/collections/{cid}/items/{item['id']}").json(),
        httpx.get(f"{live_server}/collections/{cid}/items").json()["features"][0],
        httpx.post(f"{live_server}/search", json={"collections": [cid]}).json()["features"][0],
    ]
    for feature in served:
        props = feature["properties"]
        assert "datetime" in props and props["datetime"] is None
        assert props["start_datetime"] == "2021-03-01T00:00:00Z"
