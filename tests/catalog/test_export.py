"""Bulk export: stac-geoparquet columns, every dtype read back with pyarrow and DuckDB,
footprints with geopandas."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from vectorgen import load_collection

from embcat.catalog.db import connect
from embcat.catalog.errors import InvalidInput, NotFound
from embcat.catalog.export import (
    ExportRequest,
    export_to_file,
    plan_export,
    read_metadata,
    stream_export,
)
from embcat.catalog.quantize import Quantization, from_arrow
from embcat.catalog.search import SearchQuery
from embcat.catalog.settings import DatabaseSettings

DIMS = 12
N = 40


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((N, DIMS)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(db_settings: DatabaseSettings, vectors: np.ndarray) -> Iterator[str]:
    """A committed collection ``exp`` of N items (vectorgen), removed afterwards."""
    with connect(db_settings) as c:
        load_collection(c, "exp", vectors, encoder_name="export-test", build_index=False)
        c.execute(
            "update items set properties = properties || %s::jsonb where id = 'item-03'",
            (json.dumps({"cloud": 12.5, "tags": ["a", "b"], "meta": {"k": 1}, "count": 3}),),
        )
        c.commit()
    yield "exp"
    with connect(db_settings) as c:
        c.execute("delete from collections where id = 'exp'")
        c.commit()


def _export(db_settings: DatabaseSettings, req: ExportRequest) -> bytes:
    with connect(db_settings) as c:
        plan = plan_export(c, req)
        return b"".join(stream_export(c, plan))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "binary"])
def test_each_dtype_round_trips_through_pyarrow(
    db_settings: DatabaseSettings, exported: str, vectors: np.ndarray, dtype: str
) -> None:
    data = _export(db_settings, ExportRequest(exported, dtype=dtype, batch_size=16))
    table = pq.read_table(io.BytesIO(data)).sort_by("id")  # rows in Hilbert order
    meta = read_metadata(io.BytesIO(data))
    quant = Quantization.from_stac(meta["emb:quantization"]) if meta["emb:quantization"] else None
    back = from_arrow(table["embedding"], dtype, DIMS, quant)
    stored = vectors.astype(np.float16).astype(np.float32)  # halfvec storage
    assert table["id"].to_pylist() == [f"item-{k:02d}" for k in range(N)]
    if dtype in ("float32", "float16"):
        assert np.array_equal(back, stored)
    elif dtype == "int8":
        assert np.all(np.abs(back - stored) <= np.asarray(quant.scale) / 2 + 1e-5)
    else:
        assert np.array_equal(back, np.where(stored > 0, 1.0, -1.0))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "binary"])
def test_each_dtype_reads_in_duckdb(
    db_settings: DatabaseSettings, exported: str, tmp_path: Path, dtype: str
) -> None:
    path = tmp_path / f"x-{dtype}.parquet"
    with connect(db_settings) as c:
        export_to_file(c, ExportRequest(exported, dtype=dtype), path)
    con = duckdb.connect()
    n, first = con.execute(f"select count(*), min(id) from read_parquet('{path}')").fetchone()
    emb = con.execute(f"select embedding from read_parquet('{path}') where id = 'item-00'")
    assert (n, first) == (N, "item-00")
    assert emb.fetchone()[0] is not None


def test_geopandas_reads_footprints_from_the_geo_metadata(
    db_settings: DatabaseSettings, exported: str, tmp_path: Path
) -> None:
    import geopandas

    path = tmp_path / "x.parquet"
    with connect(db_settings) as c:
        export_to_file(c, ExportRequest(exported, dtype="float16"), path)
    frame = geopandas.read_parquet(path)
    with connect(db_settings) as c:
        row = c.execute(
            "select ST_XMin(geometry), ST_YMax(geometry) from items"
            " where collection_id = %s and id = 'item-00'",
            (exported,),
        ).fetchone()
    first = frame.set_index("id").loc["item-00"]
    assert len(frame) == N and frame.crs is not None and frame.crs.to_string() == "OGC:CRS84"
    assert (first.geometry.bounds[0], first.geometry.bounds[3]) == pytest.approx(row)
    assert np.frombuffer(first["embedding"], "<f2").shape == (DIMS,)


def test_stac_geoparquet_columns_and_metadata(db_settings: DatabaseSettings, exported: str) -> None:
    data = _export(db_settings, ExportRequest(exported, base_url="http://x.test"))
    table = pq.read_table(io.BytesIO(data))
    meta = table.schema.metadata
    geo = json.loads(meta[b"geo"])
    row = next(r for r in table.to_pylist() if r["id"] == "item-03")
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert set(json.loads(meta[b"stac-geoparquet"])["collections"]) == {"exp"}
    assert (row["type"], row["collection"], row["cloud"], row["count"]) == (
        "Feature",
        "exp",
        12.5,
        3,
    )
    assert row["tags"] == ["a", "b"] and row["meta"] == {"k": 1}  # a struct column
    assert row["assets"]["embeddings"]["href"] == (
        "http://x.test/collections/exp/items/item-03/embedding"
    )
    assert row["bbox"]["xmin"] == row["bbox"]["xmax"]


def test_links_drop_generated_rels_and_make_hrefs_absolute(
    db_settings: DatabaseSettings, exported: str
) -> None:
    links = [
        {"rel": "self", "href": "/collections/exp/items/item-05"},
        {"rel": "derived_from", "href": "/data/scene one.tif", "type": "image/tiff"},
        {"rel": "via", "href": "s3://bucket/scene.tif", "title": "source"},
        {"rel": "related", "href": "/collections/exp/items/item-01"},
    ]
    with connect(db_settings) as c:
        c.execute("update items set links = %s::jsonb where id = 'item-05'", (json.dumps(links),))
        c.commit()
    data = _export(db_settings, ExportRequest(exported, base_url="http://x.test/"))
    rows = {r["id"]: r["links"] for r in pq.read_table(io.BytesIO(data)).to_pylist()}
    assert rows["item-05"] == [
        {"rel": "derived_from", "href": "file:///data/scene%20one.tif", "type": "image/tiff",
         "title": None},
        {"rel": "via", "href": "s3://bucket/scene.tif", "type": None, "title": "source"},
        {"rel": "related", "href": "http://x.test/collections/exp/items/item-01", "type": None,
         "title": None},
    ]  # fmt: skip
    assert rows["item-04"] == []


def test_filters_select_rows(db_settings: DatabaseSettings, exported: str) -> None:
    q = SearchQuery(ids=["item-05", "item-07", "item-09"], datetime="2024-01-01T06:00:00Z/..")
    table = pq.read_table(io.BytesIO(_export(db_settings, ExportRequest(exported, query=q))))
    assert table["id"].to_pylist() == ["item-07", "item-09"]


def test_resume_after_and_as_of_continue_the_same_export(
    db_settings: DatabaseSettings, exported: str
) -> None:
    full = pq.read_table(io.BytesIO(_export(db_settings, ExportRequest(exported, order="id"))))
    first = pq.read_table(io.BytesIO(_export(db_settings, ExportRequest(exported, limit=15))))
    as_of = read_metadata(io.BytesIO(_export(db_settings, ExportRequest(exported, limit=15))))
    rest = _export(
        db_settings,
        ExportRequest(exported, after=first["id"][-1].as_py(), as_of=as_of["as_of"]),
    )
    ids = first["id"].to_pylist() + pq.read_table(io.BytesIO(rest))["id"].to_pylist()
    assert as_of["more"] is True
    assert ids == full["id"].to_pylist()


def test_rows_changed_after_as_of_are_left_out(
    db_settings: DatabaseSettings, exported: str
) -> None:
    with connect(db_settings) as c:
        as_of = plan_export(c, ExportRequest(exported)).as_of
        c.execute("update items set properties = properties || '{\"x\": 1}' where id = 'item-01'")
        c.commit()
    table = pq.read_table(io.BytesIO(_export(db_settings, ExportRequest(exported, as_of=as_of))))
    assert "item-01" not in table["id"].to_pylist() and table.num_rows == N - 1


def test_unknown_collection_is_not_found(db_settings: DatabaseSettings) -> None:
    with connect(db_settings) as c, pytest.raises(NotFound, match="nope"):
        plan_export(c, ExportRequest("nope"))


def test_bad_dtype_is_invalid(db_settings: DatabaseSettings, exported: str) -> None:
    with connect(db_settings) as c, pytest.raises(InvalidInput, match="dtype"):
        plan_export(c, ExportRequest(exported, dtype="float64"))
