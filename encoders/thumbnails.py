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
``png_bytes`` is the one PNG writer of the project (zlib + CRC, no imaging library).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

MAX_SIDE = 64
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
