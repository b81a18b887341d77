"""The item shape (catalog.item_shape): what publish writes is what the module describes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imagerydata import add_thumbnails, tiny_png
from shardgen import write_run

from embcat.catalog.item_shape import (
    ItemColumns,
    item_dict,
    item_documents,
    item_template,
    rfc3339,
    rfc3339_texts,
)
from embcat.catalog.publish import load_manifest, publish
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.stac import item_to_stac
from embcat.catalog.store.spaces import Space
from embcat.catalog.vectors import file_fields, npy_digests, stored_values
from embcat.encoders.manifest import THUMBNAIL_COLUMN


def _odd_rows(rank: int, cols: dict[str, Any]) -> None:
    """Rows that take every branch of the fast path: ids to percent-encode, relative and
    spaced source paths, quotes in names, microseconds, nodata values to round, windows
    that are not square."""
    n = len(cols["id"])
    rng = np.random.default_rng(rank)
    cols["id"] = [f"{v} é/#?" if i % 7 == 0 else v for i, v in enumerate(cols["id"])]
    cols["nodata_fraction"] = [float(np.float32(v)) for v in rng.random(n).round(7)]
    cols["source_href"] = [
        h if i % 3 else (f"/data/s {i % 5}.tif" if i % 2 else f"rel/x{i % 4}.tif")
        for i, h in enumerate(cols["source_href"])
    ]
    cols["source_item"] = [
        s + ' "q\\' if i % 5 == 0 else s for i, s in enumerate(cols["source_item"])
    ]
    cols["window_height"] = [v // 2 for v in cols["window_height"]]  # not square
    cols["datetime"] = [
        d + timedelta(microseconds=(i % 3) * 1234) for i, d in enumerate(cols["datetime"])
    ]


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = write_run(tmp_path_factory.mktemp("shape") / "run", 300, dims=8, seed=2, mutate=_odd_rows)
    add_thumbnails(run, lambda r, _id: tiny_png(r) if r % 4 else None)
    return run


def _rows(run: Path) -> list[dict[str, Any]]:
    manifest, folder = load_manifest(run)
    return [row for rec in manifest.shards for row in pq.read_table(folder / rec.path).to_pylist()]


def _template(run: Path, cid: str) -> Any:
    manifest, _ = load_manifest(run)
    enc = manifest.encoder
    return item_template(manifest, cid, Space(0, enc.name, enc.version, enc.dimensions, "halfvec"))


def _expected(template: Any, row: dict[str, Any]) -> tuple[Any, Any, Any]:
    checksum = file_fields(row["embedding"], "halfvec")["file:checksum"]
    return item_documents(
        template, row, str(checksum), thumbnail=row.get(THUMBNAIL_COLUMN) is not None
    )


def test_the_column_wise_documents_are_item_documents_row_by_row(odd_run: Path) -> None:
    template = _template(odd_run, "shape")
    manifest, folder = load_manifest(odd_run)
    table = pq.read_table(folder / manifest.shards[0].path)
    batch = table.combine_chunks().to_batches()[0]
    stored = np.stack([stored_values(v) for v in batch.column("embedding").to_pylist()])
    us = batch.column("datetime").cast(pa.int64()).to_numpy()
    docs = ItemColumns(template).documents(batch, us, npy_digests(stored))
    for i, row in enumerate(batch.to_pylist()):
        got = tuple(json.loads(doc[i].as_py()) for doc in docs)
        assert got == _expected(template, row), row["id"]


def test_published_items_hold_item_documents(odd_run: Path, db_settings: DatabaseSettings) -> None:
    cid = f"shape-{uuid.uuid4().hex[:8]}"
    publish(odd_run, collection_id=cid, settings=db_settings, progress=False)
    template = _template(odd_run, cid)
    with psycopg.connect(db_settings.database_url) as c:
        stored = {
            r[0]: r[1:]
            for r in c.execute(
                "select id, properties, assets, links from items where collection_id = %s",
                (cid,),
            )
        }
    rows = _rows(odd_run)
    assert len(stored) == len(rows)
    for row in rows:
        assert stored[row["id"]] == _expected(template, row), row["id"]


def test_timestamp_texts_of_a_column_are_those_of_each_value() -> None:
    base = datetime(2024, 6, 1, 10, 30, tzinfo=UTC)
    values = [
        base,
        base + timedelta(microseconds=1),
        base + timedelta(days=400, microseconds=500000),
    ]
    want = [rfc3339(v) for v in values]
    assert want[0] == "2024-06-01T10:30:00Z" and want[1] == "2024-06-01T10:30:00.000001Z"
    for typ in (pa.timestamp("us", tz="UTC"), pa.timestamp("ns"), pa.timestamp("us", tz="+02:00")):
        assert rfc3339_texts(pa.array(values, typ)).to_pylist() == want, typ


def test_a_stored_row_declares_the_extensions_the_server_serves() -> None:
    props = {"datetime": "2024-06-01T10:30:00Z", "proj:code": "EPSG:32633", "eo:cloud_cover": 3}
    assets = {"embeddings": {"href": "/collections/c/items/i/embedding", "file:size": 160}}
    row = {
        "collection_id": "c", "id": "i", "geometry": {"type": "Point", "coordinates": [0, 0]},
        "bbox": [0, 0, 0, 0], "properties": props, "assets": assets, "links": [],
    }  # fmt: skip
    stored = item_dict("c", "i", row["geometry"], row["bbox"], props, assets, [])
    served = item_to_stac(row, "http://x")
    assert stored["stac_extensions"] == served["stac_extensions"]
    assert stored["stac_version"] == served["stac_version"]
