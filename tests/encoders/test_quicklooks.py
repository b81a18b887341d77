"""Scene quicklooks rendered at encode time (encoders.thumbnails.scene_quicklook)."""

from __future__ import annotations

import hashlib
import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from rasterdata import make_scene
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from scoredata import CHIP_PX, make_block_scene

from embcat.encoders.job import run_encode
from embcat.encoders.manifest import THUMBNAIL_COLUMN, Manifest, quicklook_records
from embcat.encoders.sources import resolve_inputs
from embcat.encoders.thumbnails import QUICKLOOK_SIDE, scene_quicklook


def decode(png: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(png) as mem, mem.open() as ds:
            return ds.read()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root: Path = tmp_path_factory.mktemp("quicklooks")
    make_block_scene(root / "blocks.tif")
    run_encode(
        [root / "blocks.tif"], root / "run", "mosaiks",
        {"num_features": 8, "chip_size": CHIP_PX, "seed": 0},
        chip_size=CHIP_PX, batch_size=64, device="cpu", workers=0, progress=False,
        datetime=datetime(2024, 6, 1, tzinfo=UTC),
    )  # fmt: skip
    return root / "run"


def test_the_manifest_records_one_quicklook_per_scene_with_its_file(run: Path) -> None:
    (rec,) = quicklook_records(Manifest.load(run))
    data = (run / rec.path).read_bytes()
    assert rec.key == "blocks" and rec.source_item == "blocks"
    assert rec.bytes == len(data) and rec.sha256 == hashlib.sha256(data).hexdigest()
    assert decode(data).shape == (4, rec.height, rec.width)
    assert rec.crs == "EPSG:3857" and rec.acquired == datetime(2024, 6, 1, tzinfo=UTC)


def test_the_quicklook_bounds_cover_every_chip_footprint_closely(run: Path) -> None:
    (rec,) = quicklook_records(Manifest.load(run))
    table = pq.read_table(next(run.glob("*.parquet")), columns=["geometry"])
    chips = shapely.union_all(shapely.from_wkb(table.column("geometry").to_numpy(False)))
    box = shapely.box(*rec.bbox)
    assert box.buffer(1e-6).contains(chips)
    assert chips.area / box.area > 0.9  # a slightly rotated square inside its bounds


def test_the_quicklook_uses_the_chips_band_choice_and_stretch(run: Path) -> None:
    (rec,) = quicklook_records(Manifest.load(run))
    look = decode((run / rec.path).read_bytes())
    opaque = look[3] == 255
    scene_rgb = look[:3][:, opaque].mean(axis=1)
    table = pq.read_table(next(run.glob("*.parquet")), columns=[THUMBNAIL_COLUMN])
    chip_rgb = np.mean(
        [decode(t)[:3].mean(axis=(1, 2)) for t in table.column(THUMBNAIL_COLUMN).to_pylist()],
        axis=0,
    )
    assert np.abs(scene_rgb - chip_rgb).max() < 6  # same true colour, same reflectance stretch


def test_a_large_scene_is_reduced_to_at_most_512_pixels_a_side(tmp_path: Path) -> None:
    path = make_scene(tmp_path / "wide.tif", bands=4, width=1600, height=700)
    (src,) = resolve_inputs([path], ["B01", "B02", "B03", "B04"], None, None, None)
    look = scene_quicklook(src, ["B01", "B02", "B03", "B04"])
    assert max(look.width, look.height) <= QUICKLOOK_SIDE
    assert look.width > 2 * look.height
    assert decode(look.png).shape == (4, look.height, look.width)


def test_nodata_is_transparent(tmp_path: Path) -> None:
    path = make_scene(tmp_path / "hole.tif", bands=4, width=256, height=256,
                      nodata_box=(0, 0, 128, 256))  # fmt: skip
    (src,) = resolve_inputs([path], ["B01", "B02", "B03", "B04"], None, None, None)
    alpha = decode(scene_quicklook(src, ["B01", "B02", "B03", "B04"]).png)[3]
    w = alpha.shape[1]
    assert (alpha[:, : w // 3] == 0).mean() > 0.95  # the western half is nodata
    assert (alpha[:, 2 * w // 3 :] == 255).mean() > 0.95


def test_quicklooks_and_thumbnails_can_be_turned_off(tmp_path: Path) -> None:
    path = make_scene(tmp_path / "s.tif", bands=13, width=64, height=64)
    run_encode(
        [path], tmp_path / "run", "mosaiks", {"num_features": 8, "chip_size": 32, "seed": 0},
        chip_size=32, device="cpu", workers=0, progress=False, quicklooks=False,
        thumbnails=False,
    )  # fmt: skip
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "quicklooks" not in manifest
    assert not (tmp_path / "run" / "quicklooks").exists()
    shard = pq.read_schema(next((tmp_path / "run").glob("*.parquet")))
    assert THUMBNAIL_COLUMN not in shard.names


def test_the_encode_command_turns_both_off(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from embcat.cli import main

    path = make_scene(tmp_path / "s.tif", bands=13, width=64, height=64)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["encode", str(path), "-o", str(out), "-O", "num_features=8", "-O", "seed=0",
         "--chip-size", "32", "--workers", "0", "--no-progress", "--no-thumbnails",
         "--no-quicklooks"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "quicklooks" not in json.loads((out / "manifest.json").read_text())
    assert THUMBNAIL_COLUMN not in pq.read_schema(next(out.glob("*.parquet"))).names
