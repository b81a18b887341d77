"""POST /collections/{id}/score through the live API: planted classes, formats, errors, scope."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pyarrow.parquet as pq
import pytest
from helpers_server import start_server
from scoredata import examples, precision_recall, publish_block_scene

from embcat.catalog.score import META_KEY, png_text

WATER, FOREST, CROPS, BARE, TOWN = 0, 1, 2, 3, 4


@pytest.fixture(scope="module")
def planted(tmp_path_factory, database_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    cid = f"scoreapi-{uuid.uuid4().hex[:8]}"
    truth = publish_block_scene(tmp_path_factory.mktemp("blocks"), database_url, cid)
    yield cid, truth
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (cid,))


def score(base: str, cid: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{base}/collections/{cid}/score", json=body, timeout=60, **kw)


@pytest.mark.parametrize("cls, other", [(WATER, FOREST), (TOWN, BARE)])
def test_api_recovers_the_planted_class(live_server, planted, cls, other) -> None:
    cid, truth = planted
    pos, neg = examples(truth, cls, other)
    r = score(live_server, cid, {"positive": pos, "negative": neg})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/geo+json")
    doc = r.json()
    precision, recall = precision_recall({f["id"] for f in doc["features"]}, truth, cls)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert [p["id"] for p in doc[META_KEY]["positive"]] == pos


def test_api_parquet_holds_the_same_chips_as_geojson(live_server, planted) -> None:
    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    body = {"positive": pos, "negative": neg}
    geo = score(live_server, cid, body).json()
    r = score(live_server, cid, {**body, "format": "parquet"})
    assert r.status_code == 200, r.text
    table = pq.read_table(io.BytesIO(r.content))
    assert set(table.column("id").to_pylist()) == {f["id"] for f in geo["features"]}
    assert json.loads(table.schema.metadata[META_KEY.encode()])["negative"][0]["id"] == neg[0]


def test_api_png_heat_map_carries_the_model(live_server, planted) -> None:
    cid, truth = planted
    pos, neg = examples(truth, WATER, FOREST)
    r = score(live_server, cid, {"positive": pos, "negative": neg, "format": "png", "width": 32})
    assert r.status_code == 200, r.text
    assert r.content.startswith(b"\x89PNG")
    assert json.loads(png_text(r.content)[META_KEY])["method"] == "linear"


@pytest.mark.parametrize(
    "body, status",
    [
        ({"positive": []}, 400),
        ({"positive": ["x"], "format": "tiff"}, 400),
        ({"positive": ["x"], "threshold": 0.5, "top": 2}, 400),
        ({"positive": ["nope-item"]}, 404),
        ({"positive": ["x"], "filter": "this is not cql2 ((("}, 400),
        ({"positive": ["x"], "unknown": 1}, 400),
    ],
)
def test_api_bad_requests_are_4xx_json(live_server, planted, body, status) -> None:
    cid, truth = planted
    body = {**body}
    if body.get("positive") == ["x"]:
        body["positive"] = [sorted(truth)[0]]
    r = score(live_server, cid, body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"code", "description"}


def test_api_unknown_collection_is_404(live_server) -> None:
    r = score(live_server, "no-such-collection", {"positive": ["a"]})
    assert r.status_code == 404, r.text


@pytest.fixture(scope="module")
def keyed_server(database_url: str, api_settings) -> Iterator[str]:
    handle = start_server(api_settings.model_copy(update={"require_read_key": True}))
    try:
        yield handle.base_url
    finally:
        handle.stop()


@pytest.fixture
def key_for(database_url: str) -> Iterator:
    from embcat.catalog.keys import create_key

    made: list[str] = []

    def factory(collection: str | None) -> str:
        with psycopg.connect(database_url) as conn:
            key_id, secret = create_key(conn, "score-test", ["read"], collection)
        made.append(key_id)
        return secret

    yield factory
    with psycopg.connect(database_url) as conn:
        conn.execute("delete from api_keys where id = any(%s)", (made,))


def test_api_score_needs_a_read_key_when_keys_are_required(keyed_server, planted) -> None:
    cid, truth = planted
    r = score(keyed_server, cid, {"positive": [sorted(truth)[0]]})
    assert r.status_code == 401, r.text


def test_api_score_refuses_a_key_of_another_collection(
    keyed_server, planted, key_for, seeded
) -> None:
    cid, truth = planted
    headers = {"Authorization": f"Bearer {key_for(seeded[0])}"}
    r = score(keyed_server, cid, {"positive": [sorted(truth)[0]]}, headers=headers)
    assert r.status_code == 403, r.text


def test_api_score_accepts_a_key_of_the_collection(keyed_server, planted, key_for) -> None:
    cid, truth = planted
    pos, neg = examples(truth, WATER, FOREST)
    headers = {"Authorization": f"Bearer {key_for(cid)}"}
    r = score(keyed_server, cid, {"positive": pos, "negative": neg}, headers=headers)
    assert r.status_code == 200, r.text
