"""Quicklooks of chips: a small PNG per chip, rendered at encode time from its pixels.

``render(pixels, bands)`` turns a batch of raw chips (``(B, C, H, W)``, the encoder's input
bands in order, before value scaling) into PNG bytes, one per chip:

- **bands**: true colour from the red, green and blue bands when the chip has them
  (Sentinel-2 ``B04, B03, B02``, Landsat ``B4, B3, B2``, or bands named red/green/blue);
  otherwise the first three bands; a single band is drawn grey.
- **stretch**: reflectance (scaled by 10,000 as in Sentinel-2 L1C/L2A, the common case, or
  plain 0..1) maps 0..0.3 to 0..255 with the same stretch for every chip of a batch, so
  that water stays dark and bright fields bright across the run; any other data is
  stretched per chip between its 2nd and 98th percentiles.
- **size**: at most ``max_side`` pixels (block means), keeping the chip's shape.

The encode job writes the PNGs into the shards' optional ``thumbnail`` column.

``scene_quicklook(source, bands)`` renders a quicklook of a whole source scene with the same
band choice and stretch: a decimated read (rasterio ``out_shape``: GDAL reads an overview
when the file has one, else decimates block by block; the full scene is never in memory)
of at most ``QUICKLOOK_SIDE`` pixels a side, warped to Web Mercator (so that a web map
places it exactly at its WGS84 bounds), nodata transparent.
``png_bytes`` is the one PNG writer of the project (zlib + CRC, no imaging library).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from embcat.encoders.sources import Source

MAX_SIDE = 64
QUICKLOOK_SIDE = 512
REFLECTANCE_MAX = 3000.0  # reflectance x 10000 shown as white (0.3)
_TRUE_COLOUR = (
    ("B04", "B03", "B02"),
    ("B4", "B3", "B2"),
    ("red", "green", "blue"),
)


def rgb_indices(bands: Sequence[str]) -> list[int]:
    """Indices of the bands drawn as red, green, blue (one index: grey)."""
    lower = [b.lower() for b in bands]
    for names in _TRUE_COLOUR:
        wanted = [n.lower() for n in names]
        if all(n in lower for n in wanted):
            return [lower.index(n) for n in wanted]
    return list(range(min(3, len(bands)))) if len(bands) >= 3 else [0]


def _downsample(image: np.ndarray, max_side: int) -> np.ndarray:
    """Block means of a (C, H, W) image down to at most ``max_side`` pixels a side."""
    _, h, w = image.shape
    factor = max(1, int(np.ceil(max(h, w) / max_side)))
    if factor == 1:
        return image
    hh, ww = h // factor * factor, w // factor * factor
    view = image[:, :hh, :ww].reshape(image.shape[0], hh // factor, factor, ww // factor, factor)
    return view.mean(axis=(2, 4))


def reflectance_white(values: np.ndarray) -> float | None:
    """The value drawn white when ``values`` look like reflectance (0.3), else None.

    Reflectance scaled by 10,000 (values 0..20,000, the chip reader hands them over as
    floats): 3,000; plain reflectance (0..1.5): 0.3; anything else: None (per-chip stretch).
    """
    if values.size == 0 or float(values.min()) < 0:
        return None
    top = float(values.max())
    if top <= 1.5:
        return 0.3
    if top <= 20000:
        return REFLECTANCE_MAX
    return None


def render(pixels: np.ndarray, bands: Sequence[str], max_side: int = MAX_SIDE) -> list[bytes]:
    """PNG bytes of each chip of ``pixels`` (B, C, H, W)."""
    pixels = np.asarray(pixels)
    picks = rgb_indices(bands)
    white = reflectance_white(pixels[:, picks])
    out = []
    for chip in pixels:
        image = _downsample(chip[picks].astype(np.float64), max_side)
        if white is not None:
            scaled = image / white
        else:
            lo, hi = np.percentile(image, [2.0, 98.0])
            scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
        rgb = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
        if rgb.shape[0] == 1:
            rgb = np.repeat(rgb, 3, axis=0)
        rgba = np.concatenate([rgb, np.full((1, *rgb.shape[1:]), 255, np.uint8)])
        out.append(png_bytes(np.moveaxis(rgba, 0, -1)))
    return out


def _stretch(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(C, h, w) values -> uint8, the chips' stretch: reflectance 0..0.3, else 2..98 %."""
    values = image[:, valid]
    white = reflectance_white(values) if values.size else None
    if white is not None:
        scaled = image / white
    elif values.size:
        lo, hi = np.percentile(values, [2.0, 98.0])
        scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    else:
        scaled = np.zeros_like(image)
    return np.round(np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class SceneQuicklook:
    png: bytes
    bbox: tuple[float, float, float, float]  # WGS84 west, south, east, north
    width: int
    height: int
    crs: str = "EPSG:3857"


def _read_decimated(src: Source, position: int, out_w: int, out_h: int) -> np.ndarray:
    """One encoder band of ``src`` over the whole scene at (out_h, out_w), float64 with NaN
    where nodata (mask, nodata value or non-finite)."""
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    from embcat.encoders.sources import open_raster

    band = src.bands[position]
    ds = open_raster(band.href)
    try:
        window = None
        if not src.aligned.get(band.href, True):
            a, b, c, d, e, f = src.transform
            x0, y0 = c, f
            x1, y1 = c + a * src.width, f + e * src.height
            window = from_bounds(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), ds.transform)
        data = ds.read(
            band.index,
            window=window,
            out_shape=(out_h, out_w),
            resampling=Resampling.average,
            masked=True,
        )
    finally:
        ds.close()
    values = np.ma.filled(data.astype(np.float64), np.nan)
    nodata = src.nodata[position]
    if nodata is not None and not np.isnan(nodata):
        values[values == nodata] = np.nan
    values[~np.isfinite(values)] = np.nan
    return values


def scene_quicklook(
    src: Source, bands: Sequence[str], max_side: int = QUICKLOOK_SIDE
) -> SceneQuicklook:
    """A PNG quicklook of the whole scene ``src`` (encoder ``bands`` in order), in Web
    Mercator, at most ``max_side`` pixels a side, with its WGS84 bounds."""
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.transform import array_bounds
    from rasterio.warp import calculate_default_transform, reproject, transform_bounds

    factor = max(1.0, max(src.width, src.height) / max_side)
    out_w = max(1, round(src.width / factor))
    out_h = max(1, round(src.height / factor))
    picks = rgb_indices(bands)
    image = np.stack([_read_decimated(src, p, out_w, out_h) for p in picks])
    src_transform = Affine(*src.transform) * Affine.scale(src.width / out_w, src.height / out_h)
    west, south, east, north = array_bounds(out_h, out_w, src_transform)
    dst_transform, dst_w, dst_h = calculate_default_transform(
        src.crs_wkt, "EPSG:3857", out_w, out_h, west, south, east, north
    )
    assert dst_w is not None and dst_h is not None
    scale = max(dst_w, dst_h) / max_side
    if scale > 1.0:  # keep the warped image within max_side as well
        dst_w, dst_h = max(1, round(dst_w / scale)), max(1, round(dst_h / scale))
        dst_transform = dst_transform * Affine.scale(scale, scale)
    warped = np.full((len(picks), dst_h, dst_w), np.nan)
    reproject(
        image,
        warped,
        src_transform=src_transform,
        src_crs=src.crs_wkt,
        src_nodata=np.nan,
        dst_transform=dst_transform,
        dst_crs="EPSG:3857",
        dst_nodata=np.nan,
        resampling=Resampling.bilinear,
    )
    valid: np.ndarray = np.asarray(np.isfinite(warped).all(axis=0))
    rgb = _stretch(warped, valid)
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    alpha = np.where(valid, 255, 0).astype(np.uint8)[None]
    rgba = np.moveaxis(np.concatenate([rgb, alpha]), 0, -1)
    mw, ms, me, mn = array_bounds(dst_h, dst_w, dst_transform)
    bbox = transform_bounds("EPSG:3857", "EPSG:4326", mw, ms, me, mn)
    return SceneQuicklook(
        png=png_bytes(rgba),
        bbox=(float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
        width=dst_w,
        height=dst_h,
    )


def png_bytes(rgba: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """An RGBA (h, w, 4) uint8 image as PNG bytes, with optional ``tEXt`` chunks."""
    h, w = rgba.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = np.ascontiguousarray(rgba, dtype=np.uint8)
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(h))
    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))]
    for key, value in (text or {}).items():
        out.append(chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1")))
    out.append(chunk(b"IDAT", zlib.compress(raw, 6)))
    out.append(chunk(b"IEND", b""))
    return b"".join(out)
