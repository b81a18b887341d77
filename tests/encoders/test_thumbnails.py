"""Chip quicklooks rendered at encode time (encoders.thumbnails) and stored in the shards."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from scoredata import BLOCK_PX, CHIP_PX, block_classes, make_block_scene

from embcat.encoders.job import THUMBNAIL_COLUMN, run_encode
from embcat.encoders.thumbnails import png_bytes, render, rgb_indices

WATER, BARE = 0, 3


def decode(png: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(png) as mem, mem.open() as ds:
            return ds.read()


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> tuple[dict[str, bytes], np.ndarray]:
    root: Path = tmp_path_factory.mktemp("thumbs")
    make_block_scene(root / "blocks.tif")
    run_encode(
        [root / "blocks.tif"], root / "run", "mosaiks",
        {"num_features": 8, "chip_size": CHIP_PX, "seed": 0},
        chip_size=CHIP_PX, batch_size=64, device="cpu", workers=0, progress=False,
        datetime=datetime(2024, 6, 1, tzinfo=UTC),
    )  # fmt: skip
    table = pq.read_table(next((root / "run").glob("*.parquet")))
    ids = table.column("id").to_pylist()
    thumbs = dict(zip(ids, table.column(THUMBNAIL_COLUMN).to_pylist(), strict=True))
    return thumbs, block_classes()


def _class_of(item_id: str, blocks: np.ndarray) -> int:
    col, row = (int(v) for v in item_id.split("_")[1:3])
    return int(blocks[row // BLOCK_PX, col // BLOCK_PX])


def test_every_chip_gets_a_png_of_its_size(shard) -> None:
    thumbs, _blocks = shard
    assert len(thumbs) == 256
    assert all(t.startswith(b"\x89PNG") for t in thumbs.values())
    assert decode(next(iter(thumbs.values()))).shape == (4, CHIP_PX, CHIP_PX)


def test_true_colour_shows_water_dark_and_blue_and_bare_fields_bright_and_red(shard) -> None:
    thumbs, blocks = shard
    water = [
        decode(t)[:3].mean(axis=(1, 2)) for i, t in thumbs.items() if _class_of(i, blocks) == WATER
    ]
    bare = [
        decode(t)[:3].mean(axis=(1, 2)) for i, t in thumbs.items() if _class_of(i, blocks) == BARE
    ]
    w, b = np.mean(water, axis=0), np.mean(bare, axis=0)  # (r, g, b)
    assert w.sum() < b.sum()
    assert w[2] > w[0] and b[0] > b[2]


def test_sentinel2_bands_are_drawn_as_b04_b03_b02() -> None:
    bands = ["B01", "B02", "B03", "B04", "B08"]
    assert rgb_indices(bands) == [3, 2, 1]
    assert rgb_indices(["nir"]) == [0]


def test_large_chips_are_reduced_to_at_most_64_pixels() -> None:
    chips = np.random.default_rng(0).integers(1, 3000, size=(1, 3, 256, 128), dtype=np.uint16)
    image = decode(render(chips, ["B04", "B03", "B02"])[0])
    assert image.shape == (4, 64, 32)


def test_png_writer_round_trips_pixels() -> None:
    rgba = np.random.default_rng(1).integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    assert np.array_equal(np.moveaxis(decode(png_bytes(rgba)), 0, -1), rgba)
    assert rasterio is not None


def test_data_that_is_not_reflectance_is_stretched_per_chip() -> None:
    chips = np.linspace(-50.0, 50.0, 3 * 8 * 8).reshape(1, 3, 8, 8)
    image = decode(render(chips, ["a", "b", "c"])[0])[:3]
    assert image.min() == 0 and image.max() == 255
