"""``embcat demo``: sample imagery -> mosaiks encode -> publish -> URLs to try.

The sample scene is a seeded 13-band Sentinel-2-like GeoTIFF in UTM zone 33N
(EPSG:32633, 10 m pixels) with a land-cover map behind it: a river and a lake (water),
forest patches, a patchwork of crop and bare fields, and two towns with street grids.
Each class has its own spectral signature plus texture, so that a similarity query from a
water chip returns water chips, a town chip returns town chips, and so on.

Every step is idempotent: a second run reuses the scene and the encode run, and the
publish is a no-op (mode ignore).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embcat.catalog.settings import DatabaseSettings, defaults
from embcat.catalog.store import item_reads
from embcat.catalog.store.spaces import IndexSettings

DEMO_COLLECTION = "demo-mosaiks"
SCENE_SIZE = 1024
CHIP_SIZE = 64
CLASSES = ("water", "forest", "crops", "bare field", "town")
S2_BANDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07",
    "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
# Surface reflectance x 10000 per class and band (typical Sentinel-2 L1C shapes).
SIGNATURES = np.array(
    [
        [1200, 1000, 850, 600, 500, 420, 380, 330, 300, 120, 20, 110, 60],  # water
        [1100, 700, 620, 420, 850, 2000, 2600, 2800, 3000, 900, 20, 1400, 700],  # forest
        [1200, 800, 950, 650, 1250, 2600, 3300, 3700, 3900, 1000, 25, 2200, 1100],  # crops
        [1400, 1250, 1550, 1850, 2100, 2300, 2450, 2550, 2650, 800, 30, 3300, 2700],  # bare
        [1550, 1450, 1500, 1700, 1800, 1900, 2000, 2100, 2150, 700, 30, 2600, 2300],  # town
    ],
    dtype=np.float32,
)


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Value noise: a coarse random grid, bilinearly upsampled, in [0, 1]."""
    n = size // scale + 2
    coarse = rng.random((n, n)).astype(np.float32)
    x = np.arange(size, dtype=np.float32) / scale
    i = x.astype(int)
    f = x - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    out = rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]
    return out


def land_cover(size: int = SCENE_SIZE, seed: int = 42) -> np.ndarray:
    """The class index (into CLASSES) of every pixel of the sample scene."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cover = np.full((size, size), 2, dtype=np.uint8)  # crops
    # fields: parcels of 48..96 px, each crops or bare
    edges_x = np.cumsum(rng.integers(48, 97, size=size // 48 + 2))
    edges_y = np.cumsum(rng.integers(48, 97, size=size // 48 + 2))
    px = np.searchsorted(edges_x, np.arange(size))
    py = np.searchsorted(edges_y, np.arange(size))
    parcel_kind = rng.random((len(edges_y) + 1, len(edges_x) + 1)) < 0.4
    cover[parcel_kind[py][:, px]] = 3
    # forest where smooth noise is high
    forest = _smooth_noise(rng, size, 128) > 0.62
    cover[forest] = 1
    # towns: two blocks of buildings with streets
    for cx, cy, r in (
        (0.25 * size, 0.7 * size, 0.09 * size),
        (0.72 * size, 0.3 * size, 0.07 * size),
    ):
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        streets = ((xx.astype(int) % 24) < 3) | ((yy.astype(int) % 24) < 3)
        cover[inside & ~streets] = 4
        cover[inside & streets] = 3
    # water: a meandering river and a lake
    center = 0.5 * size + 0.12 * size * np.sin(yy / size * 3 * np.pi + 0.7)
    cover[np.abs(xx - center) < 14 + 6 * np.sin(yy / 37.0)] = 0
    lake = ((xx - 0.8 * size) / (0.1 * size)) ** 2 + ((yy - 0.8 * size) / (0.07 * size)) ** 2 < 1
    cover[lake] = 0
    return cover


def make_scene(path: Path, *, size: int = SCENE_SIZE, seed: int = 42) -> Path:
    """Write the sample scene (uint16, 13 bands, EPSG:32633, 10 m) and return its path."""
    import rasterio
    from rasterio.transform import from_origin

    cover = land_cover(size, seed)
    rng = np.random.default_rng(seed + 1)
    parcels = 1.0 + 0.08 * (_smooth_noise(rng, size, 32) - 0.5)
    data = SIGNATURES[cover].transpose(2, 0, 1)  # (13, H, W)
    texture = rng.normal(1.0, 0.04, size=(1, size, size)).astype(np.float32)
    data = data * parcels[None] * texture
    values = np.clip(data, 1, 10000).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": len(S2_BANDS),
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000.0, 5_400_000.0, 10.0, 10.0),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "nodata": 0,
    }
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(values)
        dst.descriptions = S2_BANDS
        dst.update_tags(TIFFTAG_DATETIME="2024:06:01 10:30:00")
    tmp.replace(path)
    return path


@dataclass
class DemoInfo:
    base_url: str
    collection_id: str
    items: int
    example_item: str
    example_class: str
    publish_summary: str

    def instructions(self) -> str:
        b, c = self.base_url, self.collection_id
        return "\n".join(
            [
                "",
                f"demo collection {c}: {self.items} items (one per {CHIP_SIZE} px chip)",
                f"  landing page   {b}/",
                f"  collection     {b}/collections/{c}",
                f"  items          {b}/collections/{c}/items?limit=10",
                f"  API docs       {b}/api.html",
                f"  explorer       {b}/explorer",
                "",
                f"try: the chips most similar to {self.example_item} ({self.example_class}):",
                f"  curl '{b}/collections/{c}/items/{self.example_item}/similar?limit=5'",
                "",
            ]
        )


def prepare_demo(
    directory: Path,
    *,
    base_url: str = "http://127.0.0.1:8080",
    settings: DatabaseSettings | None = None,
    index: IndexSettings | None = None,
    echo: Callable[[str], Any] = print,
    num_features: int = 64,
    scene_size: int = SCENE_SIZE,
) -> DemoInfo:
    """Make (or reuse) the scene and its encode run, migrate, publish; describe the result."""
    from embcat.catalog import migrate
    from embcat.catalog.db import connect
    from embcat.catalog.publish import publish
    from embcat.encoders.job import run_encode
    from embcat.encoders.manifest import MANIFEST_NAME

    settings = settings or defaults(DatabaseSettings)
    directory = Path(directory)
    scene = directory / "scene.tif"
    run_dir = directory / "run"
    if not scene.exists():
        echo(f"writing the sample scene {scene} ({scene_size}x{scene_size} px, 13 bands)")
        make_scene(scene, size=scene_size)
    if not (run_dir / MANIFEST_NAME).exists():
        echo(f"encoding {scene} with mosaiks ({2 * num_features} dimensions)")
        run_encode(
            [scene],
            run_dir,
            "mosaiks",
            {"num_features": num_features, "chip_size": CHIP_SIZE, "seed": 0},
            chip_size=CHIP_SIZE,
            batch_size=64,
            device="cpu",
            workers=0,
            datetime=datetime(2024, 6, 1, 10, 30, tzinfo=UTC),
        )
    migrate.upgrade(settings)
    result = publish(
        run_dir, collection_id=DEMO_COLLECTION, mode="ignore", settings=settings, index=index
    )
    echo(result.summary())
    import rasterio

    with rasterio.open(scene) as ds:
        cover = land_cover(ds.width)
    with connect(settings) as conn:
        rows = item_reads.property_of_each(conn, DEMO_COLLECTION, "embcat:window")
    best, best_share = rows[0][0], -1.0
    for iid, window in rows:
        col, row, w, h = (int(v) for v in window)
        share = float(np.mean(cover[row : row + h, col : col + w] == 0))
        if share > best_share:
            best, best_share = iid, share
    return DemoInfo(
        base_url=base_url.rstrip("/"),
        collection_id=DEMO_COLLECTION,
        items=len(rows),
        example_item=best,
        example_class=f"{best_share:.0%} water",
        publish_summary=result.summary(),
    )
