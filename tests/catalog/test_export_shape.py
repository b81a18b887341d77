"""The exchange format round trip and the item shape of an export (issue 18): fields
constant over the collection written as constant columns (and found again after a write),
objects and arrays as nested Arrow columns where every value reads back equal, JSON text
where not, and rows in the Hilbert order of the export-order index."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from vectorgen import load_collection

from embcat.catalog.db import connect
from embcat.catalog.export import ExportRequest, plan_export, read_metadata, stream_export
from embcat.catalog.mirror_rows import rows_from_table
from embcat.catalog.settings import DatabaseSettings

DIMS = 8
N = 24
CID = "shape"


def _props(k: int) -> dict[str, Any]:
    return {
        "platform": "sentinel-2a",  # constant
        "proc:params": {"bands": ["B04", "B03"], "scale": 1.0, "grid": {"size": 64}},  # constant
        "window": [k * 64, 0, 64, 64],  # nested, varying
        "extra": {"a": 1} if k % 2 else {"b": "x"},  # keys vary: JSON text
        "empty": {},  # no Arrow type holds it: JSON text
        "tile": f"t{k % 3}",
    }


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((N, DIMS)).astype(np.float32)


@pytest.fixture()
def collection(db_settings: DatabaseSettings, vectors: np.ndarray) -> Iterator[str]:
    with connect(db_settings) as c:
        load_collection(c, CID, vectors, encoder_name="shape-test", build_index=False)
        for k in range(N):
            c.execute(
                "update items set properties = properties || %s::jsonb"
                " where collection_id = %s and id = %s",
                (json.dumps(_props(k)), CID, f"item-{k:02d}"),
            )
        c.commit()
    yield CID
    with connect(db_settings) as c:
        c.execute("delete from collections where id = %s", (CID,))
        c.commit()


def _export(db_settings: DatabaseSettings, req: ExportRequest) -> bytes:
    with connect(db_settings) as c:
        return b"".join(stream_export(c, plan_export(c, req)))


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _kinds(data: bytes) -> dict[str, str]:
    return {p["name"]: p["kind"] for p in read_metadata(io.BytesIO(data))["properties"]}


def test_export_read_back_gives_the_stored_items_and_vectors(
    db_settings: DatabaseSettings, collection: str, vectors: np.ndarray
) -> None:
    data = _export(db_settings, ExportRequest(collection, dtype="float32"))
    table = pq.read_table(io.BytesIO(data))
    rows, back = rows_from_table(table, read_metadata(io.BytesIO(data)), collection, "")
    with connect(db_settings) as c:
        stored = {
            iid: (props, assets, links)
            for iid, props, assets, links in c.execute(
                "select id, properties, assets, links from items where collection_id = %s",
                (collection,),
            ).fetchall()
        }
    assert sorted(r.id for r in rows) == sorted(stored)
    for row in rows:
        props, assets, links = stored[row.id]
        got = dict(row.properties)
        assert _instant(got.pop("datetime")) == _instant(props.pop("datetime"))
        assert (got, row.assets, row.links) == (props, assets, links), row.id
    order = [int(r.id.split("-")[1]) for r in rows]
    assert np.array_equal(back, vectors.astype(np.float16).astype(np.float32)[order])


def test_objects_and_arrays_are_nested_columns_where_they_read_back_equal(
    db_settings: DatabaseSettings, collection: str
) -> None:
    data = _export(db_settings, ExportRequest(collection, dtype="float16"))
    table = pq.read_table(io.BytesIO(data))
    kinds = _kinds(data)
    assert kinds["window"] == kinds["proc:params"] == "nested"
    assert kinds["extra"] == kinds["empty"] == "json"
    row = table.to_pylist()[0]
    k = int(row["id"].split("-")[1])
    assert row["window"] == _props(k)["window"]
    assert row["proc:params"] == _props(k)["proc:params"]
    assert json.loads(row["extra"]) == _props(k)["extra"] and json.loads(row["empty"]) == {}


def test_constant_fields_are_in_every_row_and_found_again_after_a_write(
    db_settings: DatabaseSettings, collection: str
) -> None:
    first = pq.read_table(io.BytesIO(_export(db_settings, ExportRequest(collection))))
    with connect(db_settings) as c:
        details = c.execute(
            "select details from export_shapes where collection_id = %s", (collection,)
        ).fetchone()[0]
        c.execute(
            'update items set properties = properties || \'{"platform": "sentinel-2b"}\''
            " where collection_id = %s and id = 'item-05'",
            (collection,),
        )
        c.commit()
    again = pq.read_table(io.BytesIO(_export(db_settings, ExportRequest(collection))))
    assert details["properties"]["platform"] == "sentinel-2a"
    assert set(first.column("platform").to_pylist()) == {"sentinel-2a"}
    platform = dict(zip(again["id"].to_pylist(), again["platform"].to_pylist(), strict=True))
    assert platform.pop("item-05") == "sentinel-2b"
    assert set(platform.values()) == {"sentinel-2a"}


def test_whole_collection_rows_are_in_the_hilbert_order_of_the_geometry(
    db_settings: DatabaseSettings, collection: str
) -> None:
    data = _export(db_settings, ExportRequest(collection, columns="minimal"))
    with connect(db_settings) as c:
        want = [
            r[0]
            for r in c.execute(
                "select id from items where collection_id = %s order by geometry, id",
                (collection,),
            ).fetchall()
        ]
    assert pq.read_table(io.BytesIO(data))["id"].to_pylist() == want
