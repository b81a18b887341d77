"""embcat.catalog.score: a few-shot model scored exactly in the database over a planted scene."""

from __future__ import annotations

import io
import json
import uuid
import warnings
from collections.abc import Iterator

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest
from pgvector.psycopg import register_vector
from scoredata import examples, precision_recall, publish_block_scene

from embcat.catalog import score
from embcat.catalog.errors import InvalidInput, NotFound
from embcat.catalog.similarity import ItemRef

WATER, FOREST, CROPS, BARE, TOWN = 0, 1, 2, 3, 4


@pytest.fixture(scope="module")
def planted(tmp_path_factory, database_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    cid = f"score-{uuid.uuid4().hex[:8]}"
    truth = publish_block_scene(tmp_path_factory.mktemp("blocks"), database_url, cid)
    yield cid, truth
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (cid,))


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url) as c:
        register_vector(c)
        yield c


def _kept(db, cid: str, body: dict) -> tuple[score.ScoreModel, dict[str, float]]:
    return score.score_ids(db, cid, score.parse_request(body))


# The negative is the class the encoder confuses with the planted one (bare fields and
# towns), or any other (water is distinct from all).
PAIRS = [(WATER, FOREST), (WATER, TOWN), (TOWN, BARE), (BARE, TOWN)]


@pytest.mark.parametrize("cls, other", PAIRS)
def test_two_positives_one_negative_recover_the_planted_class(db, planted, cls, other):
    cid, truth = planted
    pos, neg = examples(truth, cls, other)
    _model, kept = _kept(db, cid, {"positive": pos, "negative": neg})
    precision, recall = precision_recall(set(kept), truth, cls)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


@pytest.mark.parametrize("cls, other", PAIRS)
def test_prototype_ranks_the_planted_class_first(db, planted, cls, other):
    cid, truth = planted
    pos, neg = examples(truth, cls, other)
    size = sum(1 for c in truth.values() if c == cls)
    body = {"positive": pos, "negative": neg, "method": "prototype", "top": size}
    _model, kept = _kept(db, cid, body)
    precision, _recall = precision_recall(set(kept), truth, cls)
    assert precision >= 0.9, precision


def test_database_scores_equal_numpy_scores_of_the_stored_vectors(db, planted):
    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    model, kept = _kept(db, cid, {"positive": pos, "negative": neg, "threshold": -1e9})
    rows = db.execute(
        "select item_id, embedding::real[] from embeddings where collection_id = %s", (cid,)
    ).fetchall()
    expected = model.scores(np.array([r[1] for r in rows]))
    got = np.array([kept[r[0]] for r in rows])
    assert len(kept) == len(truth)
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_positives_average_one_and_the_negative_scores_below_the_cut(db, planted):
    cid, truth = planted
    pos, neg = examples(truth, WATER, BARE)
    _model, kept = _kept(db, cid, {"positive": pos, "negative": neg, "threshold": -1e9})
    assert np.mean([kept[p] for p in pos]) == pytest.approx(1.0, abs=5e-3)
    assert kept[neg[0]] < 0.5


def test_top_keeps_the_n_best_in_order(db, planted):
    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    _m, every = _kept(db, cid, {"positive": pos, "negative": neg, "threshold": -1e9})
    model, top = _kept(db, cid, {"positive": pos, "negative": neg, "top": 7})
    best = sorted(every.items(), key=lambda kv: (-kv[1], kv[0]))[:7]
    assert list(top) == [k for k, _ in best]
    assert model.threshold is None and model.top == 7


def test_bbox_limits_the_scored_chips(db, planted):
    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    west, south, east, north = db.execute(
        "select ST_XMin(x), ST_YMin(x), ST_XMax(x), ST_YMax(x) from (select"
        " ST_Extent(geometry)::geometry x from items where collection_id = %s) s",
        (cid,),
    ).fetchone()
    half = [west, south, (west + east) / 2, north]
    _m, kept = _kept(db, cid, {"positive": pos, "negative": neg, "threshold": -1e9, "bbox": half})
    inside = db.execute(
        "select id from items where collection_id = %s and"
        " ST_Intersects(geometry, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
        (cid, *half),
    ).fetchall()
    assert set(kept) == {r[0] for r in inside}
    assert 0 < len(kept) < len(truth)


def test_cql2_filter_and_datetime_apply(db, planted):
    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    some = sorted(truth)[:10]
    body = {
        "positive": pos,
        "negative": neg,
        "threshold": -1e9,
        "filter": {"op": "in", "args": [{"property": "id"}, some]},
        "datetime": "2024-06-01T00:00:00Z/2024-06-02T00:00:00Z",
    }
    _m, kept = _kept(db, cid, body)
    assert set(kept) == set(some)
    body["datetime"] = "2020-01-01T00:00:00Z/2020-01-02T00:00:00Z"
    assert _kept(db, cid, body)[1] == {}


def test_model_record_names_labels_method_and_filters(db, planted):
    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    model = score.fit(
        db, cid, score.parse_request({"positive": pos, "negative": neg, "bbox": [0, 0, 90, 90]})
    )
    record = score.model_from_json(json.dumps(model.as_json()))
    assert [r["id"] for r in record["positive"]] == pos
    assert [r["id"] for r in record["negative"]] == neg
    assert record["method"] == "linear" and record["threshold"] == 0.5
    assert record["filters"] == {"bbox": [0, 0, 90, 90]}
    assert len(record["query_vector"]) == model.space.dimensions


def test_geojson_stream_is_a_feature_collection_with_the_model(db, planted):
    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    req = score.parse_request({"positive": pos, "negative": neg})
    model = score.fit(db, cid, req)
    doc = json.loads(b"".join(score.stream(db, model, req)))
    _m, kept = score.score_ids(db, cid, req)
    assert {f["id"] for f in doc["features"]} == set(kept)
    assert doc[score.META_KEY]["positive"][0]["id"] == pos[0]
    assert all(f["geometry"]["type"] == "Polygon" for f in doc["features"])


def test_parquet_stream_is_geoparquet_with_the_model(db, planted):
    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    req = score.parse_request({"positive": pos, "negative": neg, "format": "parquet"})
    model = score.fit(db, cid, req)
    table = pq.read_table(io.BytesIO(b"".join(score.stream(db, model, req))))
    meta = table.schema.metadata
    assert json.loads(meta[b"geo"])["primary_column"] == "geometry"
    assert json.loads(meta[score.META_KEY.encode()])["method"] == "linear"
    _m, kept = score.score_ids(db, cid, req)
    assert set(table.column("id").to_pylist()) == set(kept)


def test_png_heat_map_colours_only_kept_chips_and_carries_the_model(db, planted):
    import rasterio
    from rasterio.io import MemoryFile

    cid, truth = planted
    pos, neg = examples(truth, WATER, BARE)
    req = score.parse_request({"positive": pos, "negative": neg, "format": "png", "width": 64})
    model = score.fit(db, cid, req)
    data = b"".join(score.stream(db, model, req))
    assert json.loads(score.png_text(data)[score.META_KEY])["method"] == "linear"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with MemoryFile(data) as mem, mem.open() as ds:
            alpha = ds.read(4)
    share = float((alpha > 0).mean())
    water = sum(1 for c in truth.values() if c == WATER) / len(truth)
    assert abs(share - water) < 0.1


def test_unknown_example_is_not_found(db, planted):
    cid, _truth = planted
    with pytest.raises(NotFound, match="nope"):
        score.fit(db, cid, score.parse_request({"positive": ["nope"]}))


def test_example_of_another_collection_is_refused(db, planted):
    cid, truth = planted
    other = ItemRef(collection="elsewhere", id="x")
    with pytest.raises(InvalidInput, match="elsewhere"):
        score.fit(db, cid, score.parse_request({"positive": [sorted(truth)[0], other]}))


def test_threshold_and_top_together_are_refused():
    with pytest.raises(InvalidInput, match="threshold"):
        score.parse_request({"positive": ["a"], "threshold": 0.5, "top": 3})


def test_same_example_as_positive_and_negative_is_refused(db, planted):
    cid, truth = planted
    one = sorted(truth)[0]
    with pytest.raises(InvalidInput):
        score.fit(db, cid, score.parse_request({"positive": [one], "negative": [one]}))


def test_like_filter_with_percent_signs_applies(db, planted):
    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    body = {
        "positive": pos,
        "negative": neg,
        "threshold": -1e9,
        "filter": {"op": "like", "args": [{"property": "id"}, "blocks_0_%"]},
    }
    _m, kept = _kept(db, cid, body)
    assert kept and set(kept) == {i for i in truth if i.startswith("blocks_0_")}


def test_parquet_result_reads_as_a_geodataframe(db, planted):
    import geopandas

    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    req = score.parse_request({"positive": pos, "negative": neg, "format": "parquet"})
    model = score.fit(db, cid, req)
    frame = geopandas.read_parquet(io.BytesIO(b"".join(score.stream(db, model, req))))
    assert frame.crs.equals("OGC:CRS84") and set(frame.geom_type) == {"Polygon"}
    assert frame.score.min() >= 0.5
