"""Issue 15, finding 1: a read key limited to one collection reads that collection only,
whatever the request names in its query or body (reads protected by keys).

What a user of such a key expects, and what the API does (README, "API keys"): a search
or collection list that names no collection shows the key's collection only; a request
that names another collection (search ``collections``, similarity ``collections``, an
example item of another collection) is refused with 403."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from helpers_server import start_server
from relhelpers import DIMS, api_settings_for, vector_connection
from vectorgen import clustered_vectors, load_collection


@pytest.fixture(scope="module")
def neighbour(database_url: str, rel_collection: str) -> Iterator[str]:
    """Another collection in the same embedding space as rel_collection (so that a
    similarity search across both is possible), ids ``n-0..n-9``."""
    cid = f"rel-nb-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(10, DIMS, clusters=2, seed=13)
    with vector_connection(database_url) as conn:
        load_collection(
            conn, cid, vectors, ids=[f"n-{k}" for k in range(10)],
            encoder_name=f"rel-{rel_collection}", build_index=False,
        )  # fmt: skip
    try:
        yield cid
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


@pytest.fixture(scope="module")
def protected(database_url: str, rel_collection: str) -> Iterator[str]:
    handle = start_server(api_settings_for(database_url, require_read_key=True))
    try:
        yield handle.base_url
    finally:
        handle.stop()


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_similar_route_refuses_another_collection_in_the_query(
    protected: str, rel_collection: str, neighbour: str, make_key
) -> None:
    secret = make_key("read", collection=rel_collection)
    r = httpx.get(
        f"{protected}/collections/{rel_collection}/items/item-000/similar",
        params={"collections": neighbour},
        headers=_auth(secret),
    )
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "Forbidden"


def test_similar_route_of_the_keys_collection_answers(
    protected: str, rel_collection: str, make_key
) -> None:
    secret = make_key("read", collection=rel_collection)
    r = httpx.get(
        f"{protected}/collections/{rel_collection}/items/item-000/similar",
        params={"limit": 3},
        headers=_auth(secret),
    )
    assert r.status_code == 200, r.text
    assert {f["collection"] for f in r.json()["features"]} == {rel_collection}


def test_search_naming_another_collection_is_refused(
    protected: str, rel_collection: str, other_collection: str, make_key
) -> None:
    secret = make_key("read", collection=rel_collection)
    r = httpx.post(
        f"{protected}/search",
        json={"collections": [rel_collection, other_collection]},
        headers=_auth(secret),
    )
    assert r.status_code == 403, r.text


def test_search_without_collections_sees_the_keys_collection_only(
    protected: str, rel_collection: str, make_key
) -> None:
    secret = make_key("read", collection=rel_collection)
    r = httpx.get(f"{protected}/search", params={"limit": 200}, headers=_auth(secret))
    assert r.status_code == 200, r.text
    features = r.json()["features"]
    assert features and {f["collection"] for f in features} == {rel_collection}


def test_search_by_ids_does_not_reach_another_collection(
    protected: str, rel_collection: str, other_collection: str, make_key
) -> None:
    secret = make_key("read", collection=rel_collection)
    r = httpx.post(f"{protected}/search", json={"ids": ["item-0", "item-1"]}, headers=_auth(secret))
    assert r.status_code == 200, r.text
    assert all(f["collection"] == rel_collection for f in r.json()["features"])


def test_similarity_by_an_item_of_another_collection_is_refused(
    protected: str, rel_collection: str, neighbour: str, make_key
) -> None:
    secret = make_key("read", collection=rel_collection)
    body = {
        "collections": [rel_collection],
        "similarity": {"item": {"collection": neighbour, "id": "n-0"}},
    }
    r = httpx.post(f"{protected}/search", json=body, headers=_auth(secret))
    assert r.status_code == 403, r.text


def test_similarity_without_collections_ranks_the_keys_collection_only(
    protected: str, rel_collection: str, make_key
) -> None:
    secret = make_key("read", collection=rel_collection)
    body = {"limit": 5, "similarity": {"item": {"collection": rel_collection, "id": "item-000"}}}
    r = httpx.post(f"{protected}/search", json=body, headers=_auth(secret))
    assert r.status_code == 200, r.text
    assert {f["collection"] for f in r.json()["features"]} == {rel_collection}


def test_collection_list_shows_the_keys_collection_only(
    protected: str, rel_collection: str, other_collection: str, make_key
) -> None:
    secret = make_key("read", collection=rel_collection)
    r = httpx.get(f"{protected}/collections", headers=_auth(secret))
    assert r.status_code == 200, r.text
    assert [c["id"] for c in r.json()["collections"]] == [rel_collection]


def test_catalogue_wide_key_still_searches_everything(
    protected: str, rel_collection: str, other_collection: str, make_key
) -> None:
    secret = make_key("read")
    r = httpx.post(
        f"{protected}/search",
        json={"collections": [rel_collection, other_collection], "limit": 200},
        headers=_auth(secret),
    )
    assert r.status_code == 200, r.text
    assert {f["collection"] for f in r.json()["features"]} == {rel_collection, other_collection}


def test_collection_write_key_cannot_create_collections(
    protected: str, rel_collection: str, make_key
) -> None:
    secret = make_key("write", collection=rel_collection)
    body = {
        "type": "Collection",
        "id": "scoped-create-refused",
        "description": "x",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[-1, -1, 1, 1]]},
            "temporal": {"interval": [[None, None]]},
        },
    }
    r = httpx.post(f"{protected}/collections", json=body, headers=_auth(secret))
    assert r.status_code == 403, r.text
