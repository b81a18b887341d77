"""PATCH of items and collections: JSON Patch (RFC 6902) and JSON Merge Patch (RFC 7386).

A list body is a JSON Patch, an object body a merge patch. A patch that cannot be applied
is a 400 with a message naming the cause; a failed ``test`` op is a 409 (the item's state
differs from what the client expected); nothing is written in either case.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from apidata import collection_json, make_item

from embcat.catalog.keys import create_key

JSON_PATCH = {"Content-Type": "application/json-patch+json"}
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture(scope="module")
def writer(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        _, secret = create_key(conn, "patch-writer", ["write"])
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def item_url(live_server: str, writer: dict[str, str], new_collection_id: Callable[[], str]) -> str:
    """URL of a fresh item (platform 'sentinel-2a', keywords ['forest', 'water'])."""
    cid = new_collection_id()
    r = httpx.post(live_server + "/collections", json=collection_json(cid), headers=writer)
    assert r.status_code == 201, r.text
    item = make_item(cid, 1, random.Random(11))
    item["properties"].update(platform="sentinel-2a", keywords=["forest", "water"])
    r = httpx.post(f"{live_server}/collections/{cid}/items", json=item, headers=writer)
    assert r.status_code == 201, r.text
    return f"{live_server}/collections/{cid}/items/{item['id']}"


def _patch(url: str, body: Any, writer: dict[str, str], kind: dict[str, str]) -> httpx.Response:
    return httpx.patch(url, content=json.dumps(body), headers={**writer, **kind})


def _props(url: str) -> dict[str, Any]:
    props: dict[str, Any] = httpx.get(url).json()["properties"]
    return props


def test_json_patch_replace_add_remove_applies(item_url: str, writer: dict[str, str]) -> None:
    ops = [
        {"op": "replace", "path": "/properties/platform", "value": "landsat-8"},
        {"op": "add", "path": "/properties/keywords/-", "value": "crop"},
        {"op": "remove", "path": "/properties/title"},
    ]
    r = _patch(item_url, ops, writer, JSON_PATCH)
    assert r.status_code == 204, r.text
    props = _props(item_url)
    assert props["platform"] == "landsat-8"
    assert props["keywords"] == ["forest", "water", "crop"]
    assert "title" not in props


def test_json_patch_move_and_copy_apply(item_url: str, writer: dict[str, str]) -> None:
    ops = [
        {"op": "copy", "from": "/properties/platform", "path": "/properties/constellation"},
        {"op": "move", "from": "/properties/title", "path": "/properties/description"},
    ]
    r = _patch(item_url, ops, writer, JSON_PATCH)
    assert r.status_code == 204, r.text
    props = _props(item_url)
    assert props["constellation"] == props["platform"] == "sentinel-2a"
    assert props["description"] == "Chip 1" and "title" not in props


def test_json_patch_passing_test_op_applies_the_rest(item_url: str, writer: dict[str, str]) -> None:
    ops = [
        {"op": "test", "path": "/properties/platform", "value": "sentinel-2a"},
        {"op": "replace", "path": "/properties/platform", "value": "sentinel-2b"},
    ]
    assert _patch(item_url, ops, writer, JSON_PATCH).status_code == 204
    assert _props(item_url)["platform"] == "sentinel-2b"


def test_json_patch_failed_test_op_is_409_and_writes_nothing(
    item_url: str, writer: dict[str, str]
) -> None:
    ops = [
        {"op": "replace", "path": "/properties/title", "value": "changed"},
        {"op": "test", "path": "/properties/platform", "value": "landsat-8"},
    ]
    r = _patch(item_url, ops, writer, JSON_PATCH)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "Conflict"
    assert "test" in r.json()["description"] and "/properties/platform" in r.json()["description"]
    assert _props(item_url)["title"] == "Chip 1"


@pytest.mark.parametrize(
    ("ops", "words"),
    [
        ([{"op": "frobnicate", "path": "/properties/x", "value": 1}], ["op"]),
        ([{"op": "add", "path": "/properties/x"}], ["value"]),
        ([{"op": "remove"}], ["path"]),
        ([{"op": "move", "path": "/properties/x"}], ["from"]),
        (["not an op"], []),
    ],
    ids=["unknown-op", "add-without-value", "remove-without-path", "move-without-from", "str"],
)
def test_json_patch_malformed_op_is_400_with_a_message(
    item_url: str, writer: dict[str, str], ops: list[Any], words: list[str]
) -> None:
    r = _patch(item_url, ops, writer, JSON_PATCH)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "InvalidInput" and body["description"]
    for word in words:
        assert word in body["description"]


@pytest.mark.parametrize(
    "op",
    [
        {"op": "replace", "path": "/properties/no_such_field", "value": 1},
        {"op": "remove", "path": "/properties/no_such_field"},
        {"op": "add", "path": "/properties/keywords/9", "value": "x"},
        {"op": "remove", "path": "/properties/keywords/not-an-index"},
        {"op": "copy", "from": "/properties/no_such_field", "path": "/properties/y"},
        {"op": "add", "path": "/no/such/parent", "value": 1},
        {"op": "replace", "path": "properties/platform", "value": "x"},
        {"op": "test", "path": "/properties/platform~2", "value": "x"},
    ],
    ids=[
        "replace-missing",
        "remove-missing",
        "index-out-of-range",
        "bad-index",
        "copy-from-missing",
        "missing-parent",
        "pointer-without-slash",
        "bad-escape",
    ],
)
def test_json_patch_that_cannot_apply_is_400_and_writes_nothing(
    item_url: str, writer: dict[str, str], op: dict[str, Any]
) -> None:
    ops = [{"op": "replace", "path": "/properties/title", "value": "changed"}, op]
    r = _patch(item_url, ops, writer, JSON_PATCH)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "InvalidInput"
    assert r.json()["description"].startswith("JSON Patch cannot be applied")
    assert _props(item_url)["title"] == "Chip 1"


def test_json_patch_changing_the_id_is_400(item_url: str, writer: dict[str, str]) -> None:
    r = _patch(item_url, [{"op": "replace", "path": "/id", "value": "other"}], writer, JSON_PATCH)
    assert r.status_code == 400, r.text
    assert "id" in r.json()["description"]


def test_json_patch_leaving_an_invalid_item_is_400(item_url: str, writer: dict[str, str]) -> None:
    r = _patch(item_url, [{"op": "remove", "path": "/properties/datetime"}], writer, JSON_PATCH)
    assert r.status_code == 400, r.text
    assert "datetime" in r.json()["description"]
    assert _props(item_url)["datetime"]


def test_merge_patch_sets_nested_values(item_url: str, writer: dict[str, str]) -> None:
    body = {"properties": {"platform": "landsat-8", "eo:snow_cover": 3}}
    assert _patch(item_url, body, writer, MERGE_PATCH).status_code == 204
    props = _props(item_url)
    assert props["platform"] == "landsat-8" and props["eo:snow_cover"] == 3
    assert props["title"] == "Chip 1"


def test_merge_patch_null_deletes_a_member(item_url: str, writer: dict[str, str]) -> None:
    body = {"properties": {"title": None, "keywords": None}}
    assert _patch(item_url, body, writer, MERGE_PATCH).status_code == 204
    props = _props(item_url)
    assert "title" not in props and "keywords" not in props
    assert props["platform"] == "sentinel-2a"


def test_merge_patch_null_of_an_absent_member_is_a_no_op(
    item_url: str, writer: dict[str, str]
) -> None:
    before = _props(item_url)
    r = _patch(item_url, {"properties": {"nothing": None}}, writer, MERGE_PATCH)
    assert r.status_code == 204
    assert _props(item_url) == before


def test_merge_patch_replaces_arrays_whole(item_url: str, writer: dict[str, str]) -> None:
    r = _patch(item_url, {"properties": {"keywords": ["urban"]}}, writer, MERGE_PATCH)
    assert r.status_code == 204
    assert _props(item_url)["keywords"] == ["urban"]


def test_merge_patch_null_deleting_a_required_member_is_400(
    item_url: str, writer: dict[str, str]
) -> None:
    r = _patch(item_url, {"geometry": None}, writer, MERGE_PATCH)
    assert r.status_code == 400, r.text
    assert "geometry" in r.json()["description"]


@pytest.mark.parametrize("body", ["a string", 3, None], ids=["string", "number", "null"])
def test_patch_body_that_is_neither_object_nor_array_is_400(
    item_url: str, writer: dict[str, str], body: Any
) -> None:
    r = _patch(item_url, body, writer, MERGE_PATCH)
    assert r.status_code == 400, r.text
    assert r.json()["description"]


def test_patch_of_a_missing_item_is_404(item_url: str, writer: dict[str, str]) -> None:
    missing = item_url.rsplit("/", 1)[0] + "/no-such-item"
    r = _patch(missing, {"properties": {"platform": "x"}}, writer, MERGE_PATCH)
    assert r.status_code == 404, r.text


def test_collection_merge_patch_null_deletes_and_sets(
    live_server: str, writer: dict[str, str], new_collection_id: Callable[[], str]
) -> None:
    cid = new_collection_id()
    body = collection_json(cid) | {"keywords": ["embeddings"]}
    assert httpx.post(live_server + "/collections", json=body, headers=writer).status_code == 201
    url = f"{live_server}/collections/{cid}"
    r = _patch(url, {"keywords": None, "title": "renamed"}, writer, MERGE_PATCH)
    assert r.status_code == 200, r.text
    got = httpx.get(url).json()
    assert "keywords" not in got and got["title"] == "renamed"


def test_collection_json_patch_failed_test_is_409_and_unknown_path_400(
    live_server: str, writer: dict[str, str], new_collection_id: Callable[[], str]
) -> None:
    cid = new_collection_id()
    assert (
        httpx.post(live_server + "/collections", json=collection_json(cid), headers=writer)
    ).status_code == 201
    url = f"{live_server}/collections/{cid}"
    failed = _patch(url, [{"op": "test", "path": "/title", "value": "x"}], writer, JSON_PATCH)
    missing = _patch(url, [{"op": "remove", "path": "/keywords"}], writer, JSON_PATCH)
    ok = _patch(url, [{"op": "replace", "path": "/title", "value": "new"}], writer, JSON_PATCH)
    assert (failed.status_code, missing.status_code, ok.status_code) == (409, 400, 200)
    assert httpx.get(url).json()["title"] == "new"
