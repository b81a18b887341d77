"""embcat.catalog.search: CQL2 translation, filters and keyset paging on the real database."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import psycopg
import pytest

from embcat.catalog.errors import InvalidInput
from embcat.catalog.search import SearchQuery, search_items, where_clause

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from apidata import collection_json, insert_collection, insert_items, make_item  # noqa: E402

CID = "searchtest"
BASE = "http://example.test"


@pytest.fixture
def items(conn: psycopg.Connection) -> list[dict]:
    rng = random.Random(11)
    made = [make_item(CID, n, rng) for n in range(30)]
    made[0]["properties"]["note"] = "x' OR 1=1 --"
    insert_collection(conn, collection_json(CID))
    insert_items(conn, made)
    return made


def ids(conn: psycopg.Connection, **kwargs) -> set[str]:
    q = SearchQuery(collections=[CID], **kwargs)
    rows = conn.execute(
        psycopg.sql.SQL("SELECT i.id FROM items i WHERE {}").format(where_clause(q))
    ).fetchall()
    return {r[0] for r in rows}


def expected(items: list[dict], pred) -> set[str]:
    return {it["id"] for it in items if pred(it["properties"])}


def test_number_comparison_in_cql2_text(conn, items) -> None:
    got = ids(conn, filter='"eo:cloud_cover" < 30')
    assert got == expected(items, lambda p: p["eo:cloud_cover"] < 30)


def test_cql2_json_string_equality(conn, items) -> None:
    f = {"op": "=", "args": [{"property": "platform"}, "landsat-8"]}
    assert ids(conn, filter=f) == expected(items, lambda p: p["platform"] == "landsat-8")


def test_hostile_value_is_a_literal(conn, items) -> None:
    f = {"op": "=", "args": [{"property": "note"}, "x' OR 1=1 --"]}
    assert ids(conn, filter=f) == {items[0]["id"]}


def test_hostile_property_name_is_rejected(conn, items) -> None:
    f = {"op": "=", "args": [{"property": "a'); DROP TABLE items; --"}, 1]}
    with pytest.raises(InvalidInput):
        where_clause(SearchQuery(filter=f))


def test_in_between_like(conn, items) -> None:
    got = ids(
        conn,
        filter="platform IN ('sentinel-2a','landsat-8') AND \"eo:cloud_cover\" BETWEEN 10 AND 60"
        " AND title LIKE 'Chip 1%'",
    )
    assert got == expected(
        items,
        lambda p: (
            p["platform"] in ("sentinel-2a", "landsat-8")
            and 10 <= p["eo:cloud_cover"] <= 60
            and p["title"].startswith("Chip 1")
        ),
    )


def test_array_contains(conn, items) -> None:
    got = ids(conn, filter="A_CONTAINS(keywords, ('water'))")
    assert got == expected(items, lambda p: "water" in p["keywords"])


def test_spatial_intersects_matches_bbox(conn, items) -> None:
    box = [-10.0, 40.0, 0.0, 45.0]
    f = {"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": box}]}
    want = {
        it["id"]
        for it in items
        if it["bbox"][0] <= box[2]
        and it["bbox"][2] >= box[0]
        and it["bbox"][1] <= box[3]
        and it["bbox"][3] >= box[1]
    }
    assert ids(conn, filter=f) == want == ids(conn, bbox=box)


def test_temporal_during_interval(conn, items) -> None:
    f = "T_DURING(datetime, INTERVAL('2021-01-02T00:00:00Z', '2021-01-04T00:00:00Z'))"
    got = ids(conn, filter=f)
    want = expected(items, lambda p: "2021-01-02T00" < p["datetime"] < "2021-01-04T00")
    assert got == want and got


def test_datetime_parameter_interval(conn, items) -> None:
    got = ids(conn, datetime="2021-01-02T00:00:00Z/2021-01-03T00:00:00Z")
    assert got == expected(items, lambda p: "2021-01-02T00" <= p["datetime"] <= "2021-01-03T00")


def test_query_extension_and_free_text(conn, items) -> None:
    got = ids(conn, query={"eo:cloud_cover": {"gte": 50}}, q=["chip 2"])
    assert got == expected(
        items, lambda p: p["eo:cloud_cover"] >= 50 and "chip 2" in p["title"].lower()
    )


def test_invalid_cql2_is_invalid_input(conn, items) -> None:
    with pytest.raises(InvalidInput, match="CQL2"):
        where_clause(SearchQuery(filter="platform = = 'x'"))


def test_paging_visits_every_item_once(conn, items) -> None:
    seen: list[str] = []
    token = None
    while True:
        page = search_items(conn, SearchQuery(collections=[CID], limit=7, token=token), BASE)
        seen += [f["id"] for f in page.features]
        token = page.next_token
        if token is None:
            break
    assert sorted(seen) == sorted(it["id"] for it in items) and len(seen) == len(set(seen))


def test_paging_is_stable_while_items_are_inserted(conn, items) -> None:
    q = SearchQuery(collections=[CID], limit=5, sortby=[{"field": "id", "direction": "asc"}])
    first = search_items(conn, q, BASE)
    newcomer = make_item(CID, 1, random.Random(99))
    newcomer["id"] = "item-0000a"  # sorts before the next page: must not shift it
    insert_items(conn, [newcomer])
    q.token = first.next_token
    second = search_items(conn, q, BASE)
    assert [f["id"] for f in second.features] == [f"item-{n:04d}" for n in range(5, 10)]


def test_prev_token_returns_previous_page(conn, items) -> None:
    q = SearchQuery(
        collections=[CID], limit=4, sortby=[{"field": "eo:cloud_cover", "direction": "desc"}]
    )
    first = search_items(conn, q, BASE)
    q.token = first.next_token
    second = search_items(conn, q, BASE)
    q.token = second.prev_token
    back = search_items(conn, q, BASE)
    assert [f["id"] for f in back.features] == [f["id"] for f in first.features]


def test_sort_by_property_descending(conn, items) -> None:
    q = SearchQuery(
        collections=[CID],
        limit=30,
        sortby=[{"field": "properties.eo:cloud_cover", "direction": "desc"}],
    )
    got = [f["properties"]["eo:cloud_cover"] for f in search_items(conn, q, BASE).features]
    assert got == sorted((it["properties"]["eo:cloud_cover"] for it in items), reverse=True)


def test_tampered_token_is_invalid_input(conn, items) -> None:
    with pytest.raises(InvalidInput):
        search_items(conn, SearchQuery(collections=[CID], token="bm90LWpzb24"), BASE)


def test_item_json_is_stac(conn, items) -> None:
    page = search_items(conn, SearchQuery(ids=[items[2]["id"]], collections=[CID]), BASE)
    feature = page.features[0]
    assert feature["stac_version"] == "1.1.0"
    assert json.loads(json.dumps(feature["geometry"]))["type"] == "Polygon"
