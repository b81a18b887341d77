"""Export bytes beside the vectors (issue 18): the encodings the writer sets on the item
columns, and what the footprints of a chip grid cost in the vectors-only profile."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import geopandas
import psycopg
import pyarrow.parquet as pq
import pytest
from shardgen import write_run  # tests/ is on sys.path under pytest

from embcat.catalog.db import connect
from embcat.catalog.export import ExportRequest, plan_export, stream_export
from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings

N = 2000  # publish-style 64 px chips, 100 a row: 20 rows of the grid


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory, db_settings: DatabaseSettings) -> Iterator[str]:
    cid = f"size-{uuid.uuid4().hex[:8]}"
    run = write_run(
        tmp_path_factory.mktemp("size") / "run", N, dims=64, seed=4, encoder="size" + cid[-8:]
    )
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    yield cid
    with psycopg.connect(db_settings.database_url) as conn:
        conn.execute("DELETE FROM collections WHERE id = %s", (cid,))


def _export(db_settings: DatabaseSettings, req: ExportRequest) -> bytes:
    with connect(db_settings) as c:
        plan = plan_export(c, req)
        return b"".join(stream_export(c, plan))


def _column_bytes(data: bytes) -> dict[str, int]:
    """Compressed bytes of each column over the file's row groups."""
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    out: dict[str, int] = {}
    for i in range(meta.num_row_groups):
        for j in range(meta.num_columns):
            col = meta.row_group(i).column(j)
            out[col.path_in_schema] = out.get(col.path_in_schema, 0) + col.total_compressed_size
    return out


@pytest.mark.parametrize("columns", ["full", "minimal"])
def test_ids_and_footprints_are_delta_byte_array(
    db_settings: DatabaseSettings, chips: str, columns: str
) -> None:
    data = _export(db_settings, ExportRequest(chips, dtype="binary", columns=columns))
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    encodings = {
        meta.column(j).path_in_schema: meta.column(j).encodings for j in range(meta.num_columns)
    }
    assert "DELTA_BYTE_ARRAY" in encodings["id"]
    assert "DELTA_BYTE_ARRAY" in encodings["geometry"]


def test_minimal_item_columns_of_a_chip_grid_take_under_21_5_bytes_a_row(
    db_settings: DatabaseSettings, chips: str
) -> None:
    """id + WKB footprint + datetime: 23.2 B a row with PLAIN footprints at zstd 3, 20.9 B
    with DELTA_BYTE_ARRAY and the minimal profile's level (100k chips: 22.4 -> 19.9 B)."""
    data = _export(db_settings, ExportRequest(chips, dtype="binary", columns="minimal"))
    sizes = _column_bytes(data)
    assert (sizes["id"] + sizes["geometry"] + sizes["datetime"]) / N < 21.5


def test_minimal_footprints_read_back_as_the_stored_geometries(
    db_settings: DatabaseSettings, chips: str
) -> None:
    data = _export(db_settings, ExportRequest(chips, dtype="binary", columns="minimal"))
    frame = geopandas.read_parquet(io.BytesIO(data))
    with psycopg.connect(db_settings.database_url) as conn:
        stored = dict(
            conn.execute(
                "SELECT id, ST_AsBinary(geometry) FROM items WHERE collection_id = %s", (chips,)
            ).fetchall()
        )
    read = dict(zip(frame["id"], frame.geometry.to_wkb(), strict=True))
    assert len(read) == N and read == stored
