"""The encode job on one process: shards, manifest, grid, nodata, datetime, resume."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from encoders_testkit import CHIP, MOSAIKS_SMALL
from pyproj import Transformer

from embcat.encoders.errors import EncodeError, InputError
from embcat.encoders.job import SHARD_META_KEY, run_encode
from embcat.encoders.manifest import Manifest, sha256_file, shard_schema


def _encode(inputs, out: Path, **kwargs):
    kwargs.setdefault("workers", 0)
    kwargs.setdefault("progress", False)
    return run_encode(inputs, out, "mosaiks", dict(MOSAIKS_SMALL), **kwargs)


def _table(out: Path):
    return pq.read_table(out / "shard-00000-of-00001.parquet")


@pytest.fixture(scope="module")
def encoded(scene_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run")
    return _encode([scene_dir], out, workers=1, batch_size=4), out


def test_run_writes_a_verified_shard_and_manifest(encoded) -> None:
    result, out = encoded
    manifest = Manifest.load(out)
    assert result.manifest == manifest
    assert manifest.rows == 10 == result.rows  # 3x2 chips of a.tif + 2x2 of b.tif
    (shard,) = manifest.shards
    assert shard.path == "shard-00000-of-00001.parquet"
    assert shard.sha256 == sha256_file(out / shard.path)
    assert shard.bytes == (out / shard.path).stat().st_size
    table = _table(out)
    # The contract's columns, then the optional quicklook (encoders.thumbnails).
    expected = shard_schema(16).append(pa.field("thumbnail", pa.binary(), nullable=True))
    assert table.schema.remove_metadata() == expected
    assert table.num_rows == 10
    assert manifest.encoder.name == "mosaiks" and manifest.encoder.dimensions == 16
    assert manifest.encoder.mlm["mlm:output"][0]["result"]["shape"] == [-1, 16]
    assert manifest.run.chip_size == manifest.run.stride == CHIP
    assert manifest.run.grid_id == f"native:{CHIP}:{CHIP}:EPSG:32633"
    assert manifest.source_bytes == 10 * 13 * 2 * CHIP * CHIP  # uint16 bands
    assert {"torch", "rasterio", "gdal", "pyarrow", "embcat"} <= set(manifest.software)
    assert not list(out.glob(".*"))  # no temporary or probe files left


def test_chip_ids_windows_and_footprints_follow_the_grid(encoded, scene_dir: Path) -> None:
    _, out = encoded
    rows = _table(out).to_pylist()
    a = [r for r in rows if r["source_item"] == "a"]
    assert [(r["window_col"], r["window_row"]) for r in a] == [
        (0, 0), (32, 0), (64, 0), (0, 32), (32, 32), (64, 32),
    ]  # fmt: skip
    assert [r["id"] for r in a][:2] == ["a_0_0_32", "a_32_0_32"]
    assert all(r["source_href"] == str(scene_dir / "a.tif") for r in a)
    assert all(r["source_crs"] == "EPSG:32633" and r["source_asset"] == "a.tif" for r in a)
    # The footprint (EPSG:4326) holds the chip centre, reprojected independently.
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    for r in a:
        x = 400000.0 + 10.0 * (r["window_col"] + CHIP / 2)
        y = 5300000.0 - 10.0 * (r["window_row"] + CHIP / 2)
        polygon = shapely.from_wkb(r["geometry"])
        assert polygon.is_valid and polygon.exterior.is_ccw
        assert polygon.contains(shapely.Point(*to_wgs84.transform(x, y)))
        assert 1.0e-5 < polygon.area < 1.5e-5  # 320 m squares at 47.8 N, in degrees²


def test_datetime_comes_from_the_tiff_tag(encoded) -> None:
    _, out = encoded
    stamps = set(_table(out).column("datetime").to_pylist())
    assert stamps == {datetime(2024, 6, 1, 10, 30, tzinfo=UTC)}


def test_datetime_option_is_used_when_the_tiff_has_none(scene_factory, tmp_path: Path) -> None:
    path = scene_factory(datetime=None)
    when = datetime(2023, 3, 4, 5, 6, 7, tzinfo=UTC)
    _encode([path], tmp_path / "out", datetime=when)
    assert set(_table(tmp_path / "out").column("datetime").to_pylist()) == {when}


def test_no_datetime_anywhere_is_a_clear_error(scene_factory, tmp_path: Path) -> None:
    path = scene_factory(datetime=None)
    with pytest.raises(InputError, match=f"{path}: no acquisition datetime.*--datetime"):
        _encode([path], tmp_path / "out")


def test_runs_are_deterministic(encoded, scene_dir: Path, tmp_path: Path) -> None:
    _, first = encoded
    _encode([scene_dir], tmp_path / "again", batch_size=3)
    a, b = _table(first), _table(tmp_path / "again")
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("geometry").equals(b.column("geometry"))
    np.testing.assert_array_equal(
        np.array(a.column("embedding").to_pylist()), np.array(b.column("embedding").to_pylist())
    )


def test_chips_over_the_nodata_threshold_are_skipped_and_counted(scene_factory, tmp_path) -> None:
    # 64x64 scene, 4 chips: the box blanks chip (0,0) fully and 1/4 of chip (32,0).
    path = scene_factory(nodata_box=(0, 0, 48, 32))
    result = _encode([path], tmp_path / "out", nodata_threshold=0.2)
    assert (result.rows, result.skipped_nodata) == (2, 2)
    assert Manifest.load(tmp_path / "out").skipped_nodata == 2
    loose = _encode([path], tmp_path / "loose", nodata_threshold=0.5)
    assert (loose.rows, loose.skipped_nodata) == (3, 1)  # a fully blank chip is never encoded
    fractions = dict(
        zip(
            _table(tmp_path / "loose").column("id").to_pylist(),
            _table(tmp_path / "loose").column("nodata_fraction").to_pylist(),
            strict=True,
        )
    )
    assert fractions["scene_32_0_32"] == pytest.approx(0.5)
    assert fractions["scene_0_32_32"] == 0.0


def test_rerun_reuses_a_complete_shard(encoded, scene_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _encode([scene_dir], out)
    shard = out / "shard-00000-of-00001.parquet"
    before = (shard.stat().st_ino, shard.stat().st_mtime_ns)
    again = _encode([scene_dir], out)
    assert again.resumed and again.totals["shards_reused"] == 1
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == before
    assert Manifest.load(out).rows == 10


def test_rerun_with_other_options_encodes_again(scene_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _encode([scene_dir], out)
    other = run_encode(
        [scene_dir], out, "mosaiks", {**MOSAIKS_SMALL, "seed": 5}, workers=0, progress=False
    )
    assert not other.resumed
    assert Manifest.load(out).encoder.options["seed"] == 5  # type: ignore[attr-defined]


def test_a_truncated_shard_is_not_trusted(scene_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _encode([scene_dir], out)
    shard = out / "shard-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    again = _encode([scene_dir], out)
    assert not again.resumed
    assert pq.read_metadata(shard).num_rows == 10


def test_an_interrupted_run_leaves_no_shard_and_resumes(
    scene_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from embcat.encoders.mosaiks import MosaiksEncoder

    calls = {"n": 0}
    original = MosaiksEncoder.forward

    def crash_on_second_batch(self, x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(MosaiksEncoder, "forward", crash_on_second_batch)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _encode([scene_dir], out, batch_size=4)
    assert sorted(p.name for p in out.iterdir()) == []  # no shard, no temp file, no manifest
    monkeypatch.setattr(MosaiksEncoder, "forward", original)
    result = _encode([scene_dir], out, batch_size=4)
    assert not result.resumed and Manifest.load(out).rows == 10


def test_shard_metadata_lets_a_rank_recognise_its_shard(encoded) -> None:
    import json

    _, out = encoded
    meta = pq.read_metadata(out / "shard-00000-of-00001.parquet").metadata
    info = json.loads(meta[SHARD_META_KEY.encode()])
    assert info["rank"] == 0 and info["world_size"] == 1 and info["rows"] == 10
    assert info["encoder"] == {"name": "mosaiks", "version": "1.0", "dimensions": 16,
                               "dtype": "float32"}  # fmt: skip
    assert len(info["plan_sha256"]) == 64
    geo = json.loads(meta[b"geo"])
    assert geo["primary_column"] == "geometry" and len(geo["columns"]["geometry"]["bbox"]) == 4


def test_bad_arguments_are_refused(scene_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EncodeError, match="batch size must be positive"):
        _encode([scene_dir], tmp_path, batch_size=0)
    with pytest.raises(InputError, match=r"no 128x128 chip fits"):
        _encode([scene_dir], tmp_path, chip_size=128)


def test_dataloader_workers_read_in_other_processes(scene_dir: Path, tmp_path: Path) -> None:
    from embcat.encoders.sources import ChipReader

    pids: set[int] = set()
    original = ChipReader.read

    def spy(self, *args):
        pids.add(os.getpid())
        return original(self, *args)

    ChipReader.read = spy  # type: ignore[method-assign]
    try:
        _encode([scene_dir], tmp_path / "out", workers=1)
    finally:
        ChipReader.read = original  # type: ignore[method-assign]
    # Forked workers do not report back through `pids`; the main process must not read.
    assert os.getpid() not in pids
