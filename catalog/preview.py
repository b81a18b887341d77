"""What the explorer draws with a collection's false colour (``catalog.preview_colour``).

``features_json`` / ``features`` (footprints with their colour, GeoJSON) and ``render_png``
(the coloured field rasterised for an area) are what the explorer page and
``/preview.png`` serve; ``preview_area`` parses the area of such a request. The false
colour itself (PCA fit, colours, cache) is ``catalog.preview_colour``, whose public names
this module re-exports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from affine import Affine

from embcat.catalog.errors import InvalidInput, translated
from embcat.catalog.preview_colour import (
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    SAMPLE_SIZE,
    FalseColour,
    FalseColourCache,
    Version,
    collection_version,
    false_colour,
    principal_components,
    robust_rgb,
)
from embcat.catalog.search_request import parse_bounds
from embcat.catalog.store import item_reads

MAX_PNG_SIDE = 2048
MAX_RENDER_ITEMS = 200_000

Bounds = tuple[float, float, float, float]


def preview_area(value: str | Sequence[Any] | None) -> Bounds | None:
    """The ``bbox`` of an explorer request as ``(west, south, east, north)``; None passes.

    Parsed as every search parses a bbox (``catalog.search_request.parse_bounds``: one
    message for each fault); an area to draw must moreover lie within -180..180 without
    crossing the antimeridian, and not be empty."""
    bounds = parse_bounds(value)
    if bounds is None:
        return None
    west, south, east, north = bounds
    if not (-180 <= west < east <= 180 and south < north):
        raise InvalidInput(
            f"bbox {list(bounds)!r}: an area to draw needs -180 <= west < east <= 180"
            " and south < north"
        )
    return bounds


def features_json(
    conn: psycopg.Connection,
    colours: FalseColour,
    *,
    bbox: tuple[float, float, float, float] | None = None,
    limit: int = 10_000,
) -> bytes:
    """Footprints of a collection's items as GeoJSON FeatureCollection bytes; every feature
    has ``properties.color`` (``#rrggbb``, or null when the item has no vector) and
    ``datetime``; ``legend`` explains the colours, ``truncated`` says more items exist.

    PostGIS's GeoJSON text and the datetime are spliced in as they come from the database
    (no parse and re-serialise per feature: 10,000 footprints are one string join).
    """
    if not 1 <= limit <= 100_000:
        raise InvalidInput(f"limit must be in 1..100000, got {limit}")
    with translated():
        rows = item_reads.footprints(conn, colours.collection_id, bbox, limit + 1)
    truncated = len(rows) > limit
    rows = rows[:limit]
    parts = []
    for iid, geometry, dt in rows:
        colour = colours.hex(iid)
        parts.append(
            f'{{"type":"Feature","id":{json.dumps(iid)},"geometry":{geometry},'
            f'"properties":{{"color":{json.dumps(colour)},"datetime":{dt or "null"}}}}}'
        )
    head = {
        "numberReturned": len(rows),
        "truncated": truncated,
        "legend": colours.legend(),
    }
    return (
        '{"type":"FeatureCollection","features":[' + ",".join(parts) + "]," + json.dumps(head)[1:]
    ).encode()


def features(
    conn: psycopg.Connection,
    colours: FalseColour,
    *,
    bbox: tuple[float, float, float, float] | None = None,
    limit: int = 10_000,
) -> dict[str, Any]:
    """``features_json`` parsed (for callers in Python)."""
    result: dict[str, Any] = json.loads(features_json(conn, colours, bbox=bbox, limit=limit))
    return result


def png_size(
    bbox: tuple[float, float, float, float], width: int | None, height: int | None
) -> tuple[int, int]:
    """Pixel size of a preview: the missing side follows the area's shape on the ground."""
    for name, value in (("width", width), ("height", height)):
        if value is not None and not 1 <= value <= MAX_PNG_SIDE:
            raise InvalidInput(f"{name} must be in 1..{MAX_PNG_SIDE}, got {value}")
    west, south, east, north = bbox
    # Ground aspect: a degree of longitude is cos(latitude) times a degree of latitude.
    aspect = (north - south) / (
        (east - west) * max(math.cos(math.radians((south + north) / 2)), 0.01)
    )
    if width is None and height is None:
        width = 512
    if width is None:
        assert height is not None
        width = round(height / aspect)
    if height is None:
        height = round(width * aspect)
    return min(max(int(width), 1), MAX_PNG_SIDE), min(max(int(height), 1), MAX_PNG_SIDE)


def render_png(
    conn: psycopg.Connection,
    colours: FalseColour,
    bbox: tuple[float, float, float, float],
    *,
    width: int | None = None,
    height: int | None = None,
) -> bytes:
    """The false-colour field of ``bbox`` as an RGBA PNG (transparent where no chip lies).

    Footprints are rasterised on a WGS84 grid with ``all_touched`` so that chips smaller
    than a pixel still show.
    """
    from rasterio import features as rio_features
    from rasterio.io import MemoryFile

    w, h = png_size(bbox, width, height)
    with translated():
        rows = item_reads.shapes(conn, colours.collection_id, bbox, MAX_RENDER_ITEMS + 1)
    if len(rows) > MAX_RENDER_ITEMS:
        raise InvalidInput(
            f"the area holds more than {MAX_RENDER_ITEMS} chips; render a smaller bbox"
        )
    west, south, east, north = bbox
    transform = Affine((east - west) / w, 0.0, west, 0.0, -(north - south) / h, north)
    shapes = []
    for iid, geometry in rows:
        i = colours.index(iid)
        if i is not None:
            shapes.append((json.loads(geometry), i + 1))
    image = np.zeros((4, h, w), dtype=np.uint8)
    if shapes:
        index = rio_features.rasterize(
            shapes, out_shape=(h, w), transform=transform, fill=0, dtype="int32", all_touched=True
        )
        covered = index > 0
        palette = colours.rgb[np.maximum(index - 1, 0)]  # (h, w, 3)
        image[:3] = np.where(covered, np.moveaxis(palette, -1, 0), 0)
        image[3] = np.where(covered, 255, 0)
    with MemoryFile() as memfile:
        with memfile.open(
            driver="PNG",
            width=w,
            height=h,
            count=4,
            dtype="uint8",
            transform=transform,
            crs="EPSG:4326",
        ) as dst:
            dst.write(image)
        return bytes(memfile.read())


__all__ = [
    "HIGH_PERCENTILE",
    "LOW_PERCENTILE",
    "MAX_PNG_SIDE",
    "MAX_RENDER_ITEMS",
    "SAMPLE_SIZE",
    "Bounds",
    "FalseColour",
    "FalseColourCache",
    "Version",
    "collection_version",
    "false_colour",
    "features",
    "features_json",
    "png_size",
    "preview_area",
    "principal_components",
    "render_png",
    "robust_rgb",
]
