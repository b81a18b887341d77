"""Item search over HTTP: GET/POST, paging links, fields, errors and limits; pystac-client."""

from __future__ import annotations

import httpx
from pystac_client import Client


def test_post_search_returns_full_properties(live_server, seeded) -> None:
    cid, items = seeded
    body = httpx.post(live_server + "/search", json={"collections": [cid], "limit": 1}).json()
    assert set(items[0]["properties"]) <= set(body["features"][0]["properties"])


def test_post_search_cql2_filter(live_server, seeded) -> None:
    cid, items = seeded
    f = {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]}
    body = httpx.post(
        live_server + "/search", json={"collections": [cid], "filter": f, "limit": 100}
    ).json()
    want = {it["id"] for it in items if it["properties"]["eo:cloud_cover"] < 20}
    assert {feat["id"] for feat in body["features"]} == want


def test_get_next_link_pages_through_everything(live_server, seeded) -> None:
    cid, items = seeded
    url: str | None = f"{live_server}/search?collections={cid}&limit=10"
    seen: list[str] = []
    while url:
        body = httpx.get(url).json()
        seen += [f["id"] for f in body["features"]]
        url = next((link["href"] for link in body["links"] if link["rel"] == "next"), None)
    assert sorted(seen) == sorted(it["id"] for it in items)


def test_post_next_link_keeps_full_items_on_later_pages(live_server, seeded) -> None:
    cid, items = seeded
    body = httpx.post(live_server + "/search", json={"collections": [cid], "limit": 2}).json()
    nxt = next(link for link in body["links"] if link["rel"] == "next")
    assert "fields" not in nxt["body"]
    page2 = httpx.post(nxt["href"], json=nxt["body"]).json()
    want = {it["id"]: set(it["properties"]) for it in items}
    for feature in page2["features"]:
        assert want[feature["id"]] <= set(feature["properties"])


def test_fields_include_keeps_only_requested(live_server, seeded) -> None:
    cid, _ = seeded
    body = httpx.get(
        f"{live_server}/search",
        params={"collections": cid, "limit": 1, "fields": "properties.platform"},
    ).json()
    assert list(body["features"][0]["properties"]) == ["platform"]


def test_bad_filter_is_400_with_message(live_server) -> None:
    r = httpx.get(f"{live_server}/search", params={"filter": "platform = = 1"})
    assert r.status_code == 400
    assert "CQL2" in r.json()["description"]


def test_limit_over_max_is_capped(live_server, seeded, api_settings) -> None:
    cid, _ = seeded
    r = httpx.get(f"{live_server}/search", params={"collections": cid, "limit": 100000})
    assert r.status_code == 200
    assert len(r.json()["features"]) <= api_settings.max_limit


def test_oversized_body_is_413(live_server, api_settings) -> None:
    payload = b'{"ids": ["' + b"x" * (api_settings.max_body_bytes + 1) + b'"]}'
    r = httpx.post(
        f"{live_server}/search", content=payload, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["code"] == "PayloadTooLarge"


def test_pystac_client_bbox_datetime_cql2_over_pages(live_server, seeded) -> None:
    cid, items = seeded
    client = Client.open(live_server)
    search = client.search(
        collections=[cid],
        bbox=[-10, 40, 10, 50.1],
        datetime="2021-01-01T00:00:00Z/2021-01-06T00:00:00Z",
        filter={"op": "like", "args": [{"property": "platform"}, "sentinel%"]},
        filter_lang="cql2-json",
        limit=4,
    )
    pages = list(search.pages())
    got = sorted(item.id for page in pages for item in page)
    want = sorted(
        it["id"]
        for it in items
        if it["properties"]["platform"].startswith("sentinel")
        and it["properties"]["datetime"] <= "2021-01-06T00:00:00Z"
    )
    assert got == want and len(pages) > 1
