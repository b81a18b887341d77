"""A generated scene with planted land-cover blocks, encoded and published (scoring tests).

``make_block_scene`` writes a 13-band Sentinel-2-like GeoTIFF (EPSG:32633, 10 m pixels)
made of square blocks, each of one land-cover class of the demo scene (water, forest,
crops, bare field, town: ``catalog.demo.SIGNATURES``) with that class's spectrum, texture
and sensor noise. Chips aligned on the blocks are pure, so each chip has one true class:
the truth scoring is measured against.

``publish_block_scene`` encodes it with the real encode job (``mosaiks``) and publishes it
with the real publish job; it returns the collection id and the true class of each item.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
from rasterdata import S2_BANDS

from embcat.catalog.demo import CLASSES, SIGNATURES

BLOCK_PX = 32
CHIP_PX = 16
BLOCKS = 8  # 8 x 8 blocks of 32 px: 256 x 256 px, 256 chips of 16 px


def block_classes(blocks: int = BLOCKS, seed: int = 3) -> np.ndarray:
    """The class of each block (blocks x blocks), every class present."""
    rng = np.random.default_rng(seed)
    n = blocks * blocks
    classes = np.arange(n) % len(CLASSES)
    rng.shuffle(classes)
    return classes.reshape(blocks, blocks).astype(np.uint8)


def make_block_scene(path: Path, *, blocks: int = BLOCKS, seed: int = 3) -> np.ndarray:
    """Write the scene; return the per-pixel class map."""
    import rasterio
    from affine import Affine

    cover = np.kron(block_classes(blocks, seed), np.ones((BLOCK_PX, BLOCK_PX), dtype=np.uint8))
    size = blocks * BLOCK_PX
    rng = np.random.default_rng(seed + 101)
    refl = SIGNATURES[cover].astype(np.float64).transpose(2, 0, 1) / 10000.0  # (13, H, W)
    texture = 1.0 + rng.normal(0.0, 0.05, size=(size, size))
    # Each block has its own brightness, forest and towns a rougher texture.
    vigour = rng.uniform(0.85, 1.15, size=(blocks, blocks))
    texture *= np.kron(vigour, np.ones((BLOCK_PX, BLOCK_PX)))
    texture[cover == 1] += rng.normal(0.0, 0.15, size=int((cover == 1).sum()))
    texture[cover == 4] += rng.normal(0.0, 0.25, size=int((cover == 4).sum()))
    refl = refl * np.clip(texture, 0.3, 2.0)[None] + rng.normal(0.0, 0.003, size=refl.shape)
    data = np.clip(np.round(refl * 10000.0), 1, 65535).astype("uint16")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=13,
        dtype="uint16",
        crs="EPSG:32633",
        transform=Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5300000.0),
        nodata=0,
    ) as dst:
        dst.write(data)
        dst.descriptions = S2_BANDS
    return cover


def publish_block_scene(
    directory: Path, database_url: str, collection_id: str, *, seed: int = 3
) -> dict[str, int]:
    """Encode + publish the scene into ``collection_id``; {item id: true class}."""
    from embcat.catalog.publish import publish
    from embcat.catalog.settings import DatabaseSettings
    from embcat.encoders.job import run_encode

    directory.mkdir(parents=True, exist_ok=True)
    scene = directory / "blocks.tif"
    cover = make_block_scene(scene, seed=seed)
    run = directory / "run"
    run_encode(
        [scene],
        run,
        "mosaiks",
        {"num_features": 64, "chip_size": CHIP_PX, "seed": 0},
        chip_size=CHIP_PX,
        batch_size=64,
        device="cpu",
        workers=0,
        progress=False,
        datetime=datetime(2024, 6, 1, 10, 30, tzinfo=UTC),
    )
    publish(
        run,
        collection_id=collection_id,
        settings=DatabaseSettings(database_url=database_url),
        progress=False,
    )
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select id, properties->'embcat:window' from items where collection_id = %s",
            (collection_id,),
        ).fetchall()
    truth = {}
    for iid, window in rows:
        col, row, w, h = (int(v) for v in window)
        values, counts = np.unique(cover[row : row + h, col : col + w], return_counts=True)
        truth[iid] = int(values[np.argmax(counts)])
    return truth


def examples(truth: dict[str, int], cls: int, other: int) -> tuple[list[str], list[str]]:
    """Two positives of ``cls`` and one negative of ``other`` (the first by id)."""
    pos = sorted(i for i, c in truth.items() if c == cls)[:2]
    neg = sorted(i for i, c in truth.items() if c == other)[:1]
    return pos, neg


def precision_recall(kept: set[str], truth: dict[str, int], cls: int) -> tuple[float, float]:
    relevant = {i for i, c in truth.items() if c == cls}
    hits = len(kept & relevant)
    return (hits / len(kept) if kept else 0.0), hits / len(relevant)
