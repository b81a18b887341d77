"""Similarity search through the live API (POST /search clause, GET .../similar)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import psycopg
import pystac
import pytest
from pgvector.psycopg import register_vector
from pystac_client import Client, ItemSearch
from vectorgen import clustered_vectors, grid_points, item_ids, load_collection, plant_neighbours

from embcat.api.similarity import SIMILARITY_CONFORMANCE

N, DIMS, K = 400, 16, 5
QUERY = 100  # rows 101..105 are its planted neighbours


@pytest.fixture(scope="module")
def coll(database_url: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    cid = f"simapi-{uuid.uuid4().hex[:8]}"
    vectors = plant_neighbours(clustered_vectors(N, DIMS, clusters=8, seed=31), [QUERY], K)
    points = grid_points(N, seed=32)
    with psycopg.connect(database_url) as c:
        register_vector(c)
        load_collection(c, cid, vectors, points, encoder_name=f"simapi-{cid}")
        c.execute("insert into collections (id, stac) values (%s, '{}')", (cid + "-bare",))
        c.commit()
    stored = vectors.astype(np.float16).astype(np.float64)
    yield cid, stored / np.linalg.norm(stored, axis=1, keepdims=True), points
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = any(%s)", ([cid, cid + "-bare"],))


def truth(unit: np.ndarray, points: np.ndarray, row: int, box: list[float] | None) -> list[str]:
    dist = 1 - unit @ unit[row]
    dist[row] = np.inf
    if box is not None:
        x, y = points[:, 0], points[:, 1]
        inside = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
        dist[~inside] = np.inf
    ids = item_ids(N)
    return [ids[j] for j in np.argsort(dist)[:K] if np.isfinite(dist[j])]


def post(base: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(base + "/search", json=body, timeout=30)


def test_conformance_class_is_announced(live_server) -> None:
    conformance = httpx.get(live_server + "/conformance", timeout=10).json()["conformsTo"]
    assert SIMILARITY_CONFORMANCE in conformance


def test_post_search_by_item_with_bbox_ranks_and_scores(live_server, coll) -> None:
    cid, unit, points = coll
    box = [0.0, 0.0, 6.0, 6.0]
    r = post(
        live_server,
        {
            "collections": [cid],
            "bbox": box,
            "limit": K,
            "similarity": {"item": {"collection": cid, "id": item_ids(N)[QUERY]}, "exact": True},
        },
    )
    assert r.status_code == 200, r.text
    items = pystac.ItemCollection.from_dict(r.json())
    assert [i.id for i in items] == truth(unit, points, QUERY, box)
    distances = [i.properties["similarity:distance"] for i in items]
    assert distances == sorted(distances)
    assert all(
        i.properties["similarity:score"] == pytest.approx(1 - d)
        for i, d in zip(items, distances, strict=True)
    )


def test_pystac_client_search_with_similarity_clause(live_server, coll) -> None:
    """pystac-client has no argument for a custom body member: a subclass adds it."""
    cid, unit, points = coll

    class SimilaritySearch(ItemSearch):
        def __init__(self, url: str, *, similarity: dict[str, Any], **kw: Any) -> None:
            super().__init__(url, **kw)
            self._parameters["similarity"] = similarity  # sent as a member of the POST body

    client = Client.open(live_server)
    search = SimilaritySearch(
        client.get_search_link().href,
        client=client,
        collections=[cid],
        limit=K,
        max_items=2 * K,
        similarity={"item": {"collection": cid, "id": item_ids(N)[QUERY]}, "exact": True},
    )
    got = list(search.items())  # follows the next link (token sim:<offset>) for page two
    dist = 1 - unit @ unit[QUERY]
    dist[QUERY] = np.inf
    assert [i.id for i in got] == [item_ids(N)[j] for j in np.argsort(dist)[: 2 * K]]
    assert all(isinstance(i, pystac.Item) and i.collection_id == cid for i in got)


def test_get_similar_with_filters(live_server, coll) -> None:
    cid, unit, points = coll
    box = [2.0, 2.0, 8.0, 9.0]
    r = httpx.get(
        f"{live_server}/collections/{cid}/items/{item_ids(N)[QUERY]}/similar",
        params={
            "bbox": ",".join(map(str, box)),
            "k": K,
            "exact": "true",
            "datetime": "2024-01-01T00:00:00Z/..",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [f["id"] for f in body["features"]] == truth(unit, points, QUERY, box)
    next_link = next(link for link in body["links"] if link["rel"] == "next")
    assert "token=sim%3A5" in next_link["href"]


def test_bbox_and_a_property_filter_both_apply(live_server, coll) -> None:
    """The bbox is tested on the embedding rows, the CQL2 filter on the items: a hit must
    pass both."""
    cid, unit, points = coll
    box = [0.0, 0.0, 6.0, 6.0]
    nearest = truth(unit, points, QUERY, box)
    excluded = nearest[:2]
    r = post(
        live_server,
        {
            "collections": [cid],
            "bbox": box,
            "filter-lang": "cql2-json",
            "filter": {"op": "not", "args": [{"op": "in", "args": [{"property": "id"}, excluded]}]},
            "limit": K - 2,
            "similarity": {"item": {"collection": cid, "id": item_ids(N)[QUERY]}, "exact": True},
        },
    )
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["features"]] == nearest[2:]


def test_post_search_by_vector_default_settings(live_server, coll) -> None:
    cid, unit, _ = coll
    r = post(
        live_server,
        {
            "collections": [cid],
            "limit": K + 1,
            "similarity": {"vector": unit[QUERY].tolist(), "collection": cid},
        },
    )
    assert r.status_code == 200, r.text
    ids = [f["id"] for f in r.json()["features"]]
    assert ids[0] == item_ids(N)[QUERY]
    assert set(ids[1:]) == set(item_ids(N)[QUERY + 1 : QUERY + 1 + K])


@pytest.mark.parametrize(
    "clause, status, message",
    [
        ({"vector": [0.5, 0.5], "collection": "{cid}"}, 400, "has 2 values"),
        ({"item": {"collection": "{cid}", "id": "missing"}}, 404, "missing"),
        ({"vector": [0.5] * DIMS, "collection": "{cid}-bare"}, 400, "without embeddings"),
        ({"item": {"collection": "{cid}", "id": "item-000"}, "ef_search": 2}, 400, "ef_search"),
        ({"vector": [1.0]}, 400, "needs 'collection'"),
    ],
)
def test_bad_clauses_are_4xx_with_a_message(live_server, coll, clause, status, message) -> None:
    clause = json.loads(json.dumps(clause).replace("{cid}", coll[0]))
    r = post(live_server, {"similarity": clause})
    assert r.status_code == status, r.text
    assert message in r.text


def test_collections_of_other_spaces_are_refused(live_server, coll, database_url) -> None:
    cid = coll[0]
    other = f"simapi-other-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(database_url) as c:
        register_vector(c)
        load_collection(
            c, other, clustered_vectors(10, 8, seed=3), encoder_name="other-enc", build_index=False
        )
        c.commit()
    try:
        r = post(
            live_server,
            {
                "collections": [cid, other],
                "similarity": {"item": {"collection": cid, "id": "item-000"}},
            },
        )
        assert r.status_code == 400
        assert "different embedding spaces" in r.text and other in r.text
    finally:
        with psycopg.connect(database_url) as c:
            c.execute("delete from collections where id = %s", (other,))


def test_openapi_documents_the_clause_with_examples(live_server) -> None:
    doc = httpx.get(live_server + "/api", timeout=10).json()
    examples = doc["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]
    assert "similarity" in examples["examples"]["by item"]["value"]
    assert "/collections/{collection_id}/items/{item_id}/similar" in doc["paths"]
    assert "SimilaritySpec" in doc["components"]["schemas"]


def test_get_similar_and_get_search_refuse_a_bad_bbox_with_the_same_message(
    live_server, coll
) -> None:
    cid = coll[0]
    similar = httpx.get(
        f"{live_server}/collections/{cid}/items/{item_ids(N)[QUERY]}/similar",
        params={"bbox": "1,2,x"},
        timeout=30,
    )
    items = httpx.post(f"{live_server}/search", json={"bbox": [1, 2, 3]}, timeout=30)
    assert similar.status_code == 400, similar.text
    assert "bbox must be 4 or 6 numbers" in similar.text
    assert items.status_code == 400


def test_post_similarity_next_link_echoes_the_client_body(live_server, coll) -> None:
    cid = coll[0]
    sent = {
        "collections": [cid],
        "limit": 2,
        "similarity": {"item": {"collection": cid, "id": item_ids(N)[QUERY]}},
    }
    r = post(live_server, sent)
    assert r.status_code == 200, r.text
    (link,) = [link for link in r.json()["links"] if link["rel"] == "next"]
    assert link["body"] == {**sent, "token": "sim:2"}
    again = post(live_server, link["body"])
    assert again.status_code == 200 and again.json()["numberReturned"] == 2
