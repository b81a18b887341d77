"""A reserved (empty, space-less) collection through the live API: served, never a 500."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pystac

from embcat.catalog.collections import reserve_collection


def _reserved(database_url: str) -> str:
    cid = "reserved-" + uuid.uuid4().hex[:8]
    with psycopg.connect(database_url) as conn:
        reserve_collection(conn, cid, title="Next run", description="Filled by the HPC job")
        conn.commit()
    return cid


def test_a_reserved_collection_is_a_valid_stac_collection(live_server, database_url) -> None:
    cid = _reserved(database_url)
    r = httpx.get(f"{live_server}/collections/{cid}")
    assert r.status_code == 200, r.text
    coll = pystac.Collection.from_dict(r.json())
    coll.validate()
    assert (coll.id, coll.title) == (cid, "Next run")


def test_a_reserved_collection_has_no_items_and_no_model(live_server, database_url) -> None:
    cid = _reserved(database_url)
    items = httpx.get(f"{live_server}/collections/{cid}/items")
    assert items.status_code == 200 and items.json()["features"] == []
    model = httpx.get(f"{live_server}/collections/{cid}/model")
    assert model.status_code == 404


def test_similarity_in_a_reserved_collection_is_a_4xx(live_server, database_url) -> None:
    cid = _reserved(database_url)
    r = httpx.post(
        f"{live_server}/search", json={"similarity": {"vector": [0.5] * 8, "collection": cid}}
    )
    assert 400 <= r.status_code < 500, r.text
