"""Property-based tests of the publish validator (hypothesis): a run with one generated
defect anywhere (NaN/Inf or float16 overflow in any cell, broken or out-of-range geometry,
duplicate ids across shards, wrong dimensions or dtype, a missing column, nulls, dates out of
range, a truncated or garbage Parquet file) is refused with InvalidInput naming the problem,
and the database is unchanged."""

from __future__ import annotations

import json
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relhelpers import table_counts
from shardgen import write_run

from embcat.catalog.errors import InvalidInput
from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings
from embcat.encoders.manifest import MANIFEST_NAME, sha256_file

ROWS, DIMS, SHARDS = 24, 4, 2
PER_SHARD = ROWS // SHARDS

rank_st = st.integers(0, SHARDS - 1)
row_st = st.integers(0, PER_SHARD - 1)


@st.composite
def row_defects(draw: st.DrawFn) -> tuple[str, Any, str]:
    """(kind, mutate hook for shardgen.write_run, regex the error must contain)."""
    kind = draw(
        st.sampled_from(
            ["nonfinite", "overflow", "wkb", "bowtie", "range", "empty", "dup", "date", "window"]
        )
    )
    bad_rank, bad_row = draw(rank_st), draw(row_st)
    dim = draw(st.integers(0, DIMS - 1))
    value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    garbage = draw(st.binary(min_size=0, max_size=40))
    lon = draw(st.floats(180.001, 1e7) | st.floats(-1e7, -180.001))
    other_rank, other_row = draw(rank_st), draw(row_st)
    year = draw(st.integers(1, 1899) | st.integers(2100, 9999))

    def mutate(rank: int, cols: dict[str, Any]) -> None:
        if kind == "dup":
            if rank == other_rank:
                # an id of row bad_row of shard bad_rank, copied to another row
                source = bad_rank * PER_SHARD + bad_row
                if (other_rank, other_row) == (bad_rank, bad_row):
                    target = (other_row + 1) % PER_SHARD
                else:
                    target = other_row
                cols["id"][target] = f"chip-{source:08d}"
            return
        if rank != bad_rank:
            return
        if kind == "nonfinite":
            cols["embedding"][bad_row, dim] = value
        elif kind == "overflow":
            cols["embedding"][bad_row, dim] = 70000.0 * (1 if dim % 2 else -1)
        elif kind == "wkb":
            cols["geometry"][bad_row] = b"\x01\x03" + garbage
        elif kind == "bowtie":
            bowtie = shapely.Polygon([(10, 45), (11, 46), (11, 45), (10, 46)])
            cols["geometry"][bad_row] = shapely.to_wkb(bowtie)
        elif kind == "range":
            cols["geometry"][bad_row] = shapely.to_wkb(shapely.box(lon, 45, lon + 0.01, 45.01))
        elif kind == "empty":
            cols["geometry"][bad_row] = shapely.to_wkb(shapely.Polygon())
        elif kind == "date":
            cols["datetime"][bad_row] = datetime(year, 6, 1, tzinfo=UTC)
        elif kind == "window":
            cols["window_width"][bad_row] = -draw_width

    draw_width = draw(st.integers(0, 2**31 - 1))
    message = {
        "nonfinite": r"NaN or infinite",
        "overflow": r"float16",
        "wkb": r"not valid WKB|empty or invalid",
        "bowtie": r"empty or invalid",
        "range": r"WGS84",
        "empty": r"empty or invalid|not valid WKB",
        "dup": r"duplicate item ids",
        "date": r"1900\.\.2100",
        "window": r"window_width must be positive",
    }[kind]
    return kind, mutate, message


def _rewrite_shard(run: Path, rank: int, table: pa.Table) -> None:
    """Replace shard ``rank`` by ``table`` and fix its manifest record (size, sha256, rows)."""
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    rec = manifest["shards"][rank]
    path = run / rec["path"]
    pq.write_table(table, path)
    rec.update(bytes=path.stat().st_size, sha256=sha256_file(path), rows=table.num_rows)
    manifest["rows"] = sum(s["rows"] for s in manifest["shards"])
    (run / MANIFEST_NAME).write_text(json.dumps(manifest))


@st.composite
def file_defects(draw: st.DrawFn) -> tuple[str, Any, str]:
    """(kind, edit(run_dir), regex): defects of the files rather than of rows."""
    kind = draw(
        st.sampled_from(
            ["truncate", "truncate-fixed", "garbage", "dims", "dtype", "missing", "null", "extra"]
        )
    )
    rank = draw(rank_st)
    fraction = draw(st.floats(0.0, 0.99))
    garbage = draw(st.binary(min_size=1, max_size=200))
    column = draw(
        st.sampled_from(["id", "geometry", "datetime", "embedding", "window_col", "source_crs"])
    )
    delta = draw(st.sampled_from([-3, -1, 1, 5]))

    def edit(run: Path) -> None:
        manifest = json.loads((run / MANIFEST_NAME).read_text())
        path = run / manifest["shards"][rank]["path"]
        table = pq.read_table(path)
        if kind in ("truncate", "truncate-fixed"):
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * fraction)])
            if kind == "truncate-fixed":  # a manifest written after the damage
                manifest["shards"][rank].update(bytes=path.stat().st_size, sha256=sha256_file(path))
                (run / MANIFEST_NAME).write_text(json.dumps(manifest))
        elif kind == "garbage":
            path.write_bytes(garbage)
            manifest["shards"][rank].update(bytes=len(garbage), sha256=sha256_file(path))
            (run / MANIFEST_NAME).write_text(json.dumps(manifest))
        elif kind == "dims":
            manifest["encoder"]["dimensions"] = DIMS + delta
            (run / MANIFEST_NAME).write_text(json.dumps(manifest))
        elif kind == "dtype":
            emb = table.column("embedding").combine_chunks()
            wide = pa.FixedSizeListArray.from_arrays(emb.flatten().cast(pa.float64()), DIMS)
            idx = table.schema.get_field_index("embedding")
            _rewrite_shard(run, rank, table.set_column(idx, "embedding", wide))
        elif kind == "missing":
            _rewrite_shard(run, rank, table.drop_columns([column]))
        elif kind == "null":
            idx = table.schema.get_field_index(column)
            values = table.column(column).to_pylist()
            values[int(fraction * len(values))] = None
            field = table.schema.field(idx).with_nullable(True)
            arr = pa.array(values, type=field.type)
            _rewrite_shard(run, rank, table.set_column(idx, field, arr))
        elif kind == "extra":  # the manifest counts rows that are not there
            manifest["shards"][rank]["rows"] += 1
            manifest["rows"] += 1
            (run / MANIFEST_NAME).write_text(json.dumps(manifest))

    message = {
        "truncate": r"bytes, the manifest says|does not match the manifest|not a Parquet",
        "truncate-fixed": r"not a Parquet file",
        "garbage": r"not a Parquet file",
        "dims": r"dimensions",
        "dtype": r"embedding values are double",
        "missing": rf"column '{column}' is missing",
        "null": rf"{column} is null",
        "extra": r"rows",
    }[kind]
    return kind, edit, message


SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _refused(db_settings: DatabaseSettings, run: Path, message: str) -> None:
    before = table_counts(db_settings.database_url)
    cid = f"fuzz-{uuid.uuid4().hex[:8]}"
    with pytest.raises(InvalidInput, match=message):
        publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert table_counts(db_settings.database_url) == before


@SETTINGS
@given(defect=row_defects())
def test_row_defects_are_refused_and_nothing_is_written(
    db_settings: DatabaseSettings, defect: tuple[str, Any, str]
) -> None:
    _, mutate, message = defect
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / "run", ROWS, DIMS, seed=3, shards=SHARDS, mutate=mutate)
        _refused(db_settings, run, message)


@SETTINGS
@given(defect=file_defects())
def test_file_defects_are_refused_and_nothing_is_written(
    db_settings: DatabaseSettings, defect: tuple[str, Any, str]
) -> None:
    _, edit, message = defect
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / "run", ROWS, DIMS, seed=3, shards=SHARDS)
        edit(run)
        _refused(db_settings, run, message)
