"""Core STAC endpoints against the live server and the session database."""

from __future__ import annotations

import httpx


def test_landing_page_links_conformance_collections_search(live_server: str) -> None:
    body = httpx.get(live_server + "/").json()
    rels = {link["rel"] for link in body["links"]}
    assert {"self", "root", "conformance", "data", "search", "service-desc"} <= rels
    assert body["stac_version"] == "1.1.0"


def test_landing_page_links_the_explorer(live_server: str) -> None:
    body = httpx.get(live_server + "/").json()
    explorer = [link for link in body["links"] if link["href"] == live_server + "/explorer"]
    assert [(link["rel"], link["type"]) for link in explorer] == [("alternate", "text/html")]
    assert httpx.get(explorer[0]["href"]).status_code in (200, 503)


def test_conformance_lists_core_and_item_search(live_server: str) -> None:
    classes = httpx.get(live_server + "/conformance").json()["conformsTo"]
    assert "https://api.stacspec.org/v1.0.0/core" in classes
    assert "https://api.stacspec.org/v1.0.0/item-search" in classes


def test_collection_is_served_with_generated_links(live_server: str, seeded) -> None:
    cid, _ = seeded
    body = httpx.get(f"{live_server}/collections/{cid}").json()
    rels = {link["rel"]: link["href"] for link in body["links"]}
    assert body["id"] == cid
    assert rels["self"] == f"{live_server}/collections/{cid}"
    assert rels["items"] == f"{live_server}/collections/{cid}/items"


def test_item_has_absolute_embedding_href(live_server: str, seeded) -> None:
    cid, items = seeded
    body = httpx.get(f"{live_server}/collections/{cid}/items/{items[3]['id']}").json()
    assert body["assets"]["embeddings"]["href"] == (
        f"{live_server}/collections/{cid}/items/{items[3]['id']}/embedding"
    )
    assert body["properties"]["eo:cloud_cover"] == items[3]["properties"]["eo:cloud_cover"]


def test_unknown_item_is_404_json(live_server: str, seeded) -> None:
    cid, _ = seeded
    r = httpx.get(f"{live_server}/collections/{cid}/items/nope")
    assert r.status_code == 404
    assert r.json()["code"] == "NotFound"


def test_items_page_limit(live_server: str, seeded) -> None:
    cid, _ = seeded
    body = httpx.get(f"{live_server}/collections/{cid}/items", params={"limit": 5}).json()
    assert len(body["features"]) == 5
    assert any(link["rel"] == "next" for link in body["links"])


def test_health_reports_versions(live_server: str) -> None:
    body = httpx.get(live_server + "/health").json()
    assert body["database"] == "reachable"
    assert body["pgvector"] and body["postgis"]
