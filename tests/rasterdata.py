"""Seeded, georeferenced test scenes with visible structure (for every test that needs imagery).

``make_scene`` writes a multi-band GeoTIFF in the style of a Sentinel-2 L1C scene
(uint16 reflectance x 10000, band descriptions B01..B12) with a real CRS and geotransform
and land cover you can see: a river and a lake (water), rectangular field parcels of
green crops and bare soil, patches of forest with texture, and a couple of towns (bright
building blocks on a road grid). Similar land cover gives similar chips, so similarity
search over encoded chips means something. Everything is derived from ``seed``::

    from rasterdata import make_scene        # tests/ is on sys.path under pytest
    path = make_scene(tmp_path / "scene.tif", width=128, height=128, seed=1)

Also returns the class map through ``scene_classes`` for tests that check similarity.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

S2_BANDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07",
    "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip

WATER, CROP, SOIL, FOREST, TOWN = 0, 1, 2, 3, 4
CLASS_NAMES = ("water", "crop", "soil", "forest", "town")

# Typical top-of-atmosphere reflectance of each class in the 13 Sentinel-2 bands.
_SPECTRA = np.array(
    [
        [0.080, 0.060, 0.050, 0.030, 0.025, 0.020, 0.018, 0.015, 0.014, 0.010, 0.002, 0.008, 0.005],
        [0.040, 0.040, 0.070, 0.040, 0.100, 0.300, 0.380, 0.400, 0.420, 0.380, 0.004, 0.200, 0.100],
        [0.080, 0.090, 0.120, 0.150, 0.170, 0.190, 0.210, 0.220, 0.230, 0.220, 0.006, 0.300, 0.250],
        [0.030, 0.030, 0.050, 0.030, 0.080, 0.250, 0.300, 0.320, 0.330, 0.300, 0.004, 0.150, 0.070],
        [0.120, 0.130, 0.140, 0.160, 0.170, 0.180, 0.190, 0.200, 0.200, 0.180, 0.008, 0.220, 0.200],
    ]
)


def _smooth_field(rng: np.random.Generator, height: int, width: int, waves: int = 6) -> np.ndarray:
    """A smooth random field in [0, 1] (sum of low-frequency sinusoids)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    field = np.zeros((height, width))
    scale = max(height, width)
    for _ in range(waves):
        k = rng.uniform(0.5, 3.0) * 2 * np.pi / scale
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(k * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    field -= field.min()
    return field / max(field.max(), 1e-9)


def scene_classes(width: int, height: int, seed: int = 0) -> np.ndarray:
    """The land-cover class map (``height x width``, uint8) that ``make_scene`` renders."""
    rng = np.random.default_rng(seed)
    relief = _smooth_field(rng, height, width)
    cover = np.full((height, width), CROP, dtype=np.uint8)
    # Field parcels: a jittered grid of rectangles, each green crop or bare soil.
    parcel = max(8, min(width, height) // 8)
    for r0 in range(0, height, parcel):
        for c0 in range(0, width, parcel):
            h = min(parcel - int(rng.integers(0, parcel // 4 + 1)), height - r0)
            w = min(parcel - int(rng.integers(0, parcel // 4 + 1)), width - c0)
            cover[r0 : r0 + h, c0 : c0 + w] = CROP if rng.random() < 0.6 else SOIL
    # Forest on high ground, water (lake) in the lowest hollows.
    cover[relief > 0.68] = FOREST
    cover[relief < 0.12] = WATER
    # A meandering river.
    yy, xx = np.mgrid[0:height, 0:width]
    amp, freq, phase = rng.uniform(0.05, 0.15) * width, rng.uniform(1, 3), rng.uniform(0, 6.28)
    centre = width * rng.uniform(0.3, 0.7) + amp * np.sin(freq * 2 * np.pi * yy / height + phase)
    cover[np.abs(xx - centre) < max(2.0, width / 60)] = WATER
    # Towns: blocks of buildings on a road grid, away from the river.
    for _ in range(max(1, (width * height) // (256 * 256))):
        tr, tc = int(rng.integers(0, height)), int(rng.integers(0, width))
        size = max(10, min(width, height) // 6)
        block = cover[tr : tr + size, tc : tc + size]
        town = np.full(block.shape, TOWN, dtype=np.uint8)
        town[::6, :] = SOIL  # roads
        town[:, ::6] = SOIL
        block[block != WATER] = town[block != WATER]
    return cover


def make_scene(
    path: str | Path,
    bands: int = 13,
    width: int = 256,
    height: int = 256,
    crs: str | None = "EPSG:32633",
    seed: int = 0,
    datetime: datetime | None = datetime(2024, 6, 1, 10, 30, tzinfo=UTC),  # noqa: B008
    *,
    gsd: float = 10.0,
    origin: tuple[float, float] = (400000.0, 5300000.0),
    band_names: list[str] | None = None,
    nodata: int | None = 0,
    nodata_box: tuple[int, int, int, int] | None = None,
    blocksize: int = 64,
    dtype: str = "uint16",
) -> Path:
    """Write a seeded, georeferenced multi-band GeoTIFF scene and return its path.

    ``crs=None`` writes a raster without georeferencing (no CRS, no geotransform).
    ``origin`` is the upper-left corner in CRS units, ``gsd`` the pixel size in CRS
    units. ``datetime`` goes into the TIFF tag TIFFTAG_DATETIME (``None``: no tag).
    Band descriptions are ``band_names`` (default: the first ``bands`` Sentinel-2 names,
    or B1..Bn past 13). ``nodata_box=(col, row, width, height)`` fills that window with
    the nodata value. Values are uint16 reflectance x 10000 (never 0 outside nodata).
    """
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning

    path = Path(path)
    if band_names is None:
        band_names = list(S2_BANDS[:bands]) if bands <= 13 else [f"B{i + 1}" for i in range(bands)]
    if len(band_names) != bands:
        raise ValueError(f"{len(band_names)} band names for {bands} bands")
    rng = np.random.default_rng(seed + 7919)
    cover = scene_classes(width, height, seed)
    # Spectra resampled to the band count (interpolated over the 13 S2 bands).
    src_x = np.linspace(0.0, 1.0, _SPECTRA.shape[1])
    dst_x = np.linspace(0.0, 1.0, bands)
    spectra = np.stack([np.interp(dst_x, src_x, s) for s in _SPECTRA])  # (classes, bands)
    refl = spectra[cover].transpose(2, 0, 1)  # (bands, H, W)
    # Texture: brightness varies per pixel (strongly in forest and towns), plus sensor noise.
    texture = 1.0 + rng.normal(0.0, 0.04, size=(height, width))
    # Each field parcel has its own crop vigour, so parcel boundaries show.
    parcel = max(8, min(width, height) // 8)
    vigour = rng.uniform(0.8, 1.2, size=(height // parcel + 1, width // parcel + 1))
    fields = (cover == CROP) | (cover == SOIL)
    texture[fields] *= np.kron(vigour, np.ones((parcel, parcel)))[:height, :width][fields]
    texture[cover == FOREST] += rng.normal(0.0, 0.15, size=int((cover == FOREST).sum()))
    texture[cover == TOWN] += rng.normal(0.0, 0.25, size=int((cover == TOWN).sum()))
    refl = refl * np.clip(texture, 0.3, 2.0)[None] + rng.normal(0.0, 0.003, size=refl.shape)
    data = np.clip(np.round(refl * 10000.0), 1, np.iinfo(np.uint16).max).astype(dtype)
    if nodata_box is not None:
        if nodata is None:
            raise ValueError("nodata_box needs a nodata value")
        c, r, w, h = nodata_box
        data[:, r : r + h, c : c + w] = nodata

    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": dtype,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": "deflate",
        "interleave": "pixel",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = Affine(gsd, 0.0, origin[0], 0.0, -gsd, origin[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = tuple(band_names)
            if datetime is not None:
                dst.update_tags(TIFFTAG_DATETIME=datetime.strftime("%Y:%m:%d %H:%M:%S"))
    return path
