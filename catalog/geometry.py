"""The one geometry rule of the catalogue: what an item may store and a search may send.

Publishing (catalog/publish.py, vectorised over WKB), the transaction endpoints and the
search filters apply the same rule: a geometry is valid GeoJSON as written (rings closed
with at least four positions: shapely would close an open ring silently and PostGIS would
then refuse the text that was stored), valid in the OGC sense (no self-intersection, no
bow-tie), not empty, 2-D, of finite coordinates inside the WGS84 range (lon -180..180,
lat -90..90) and of at most ``MAX_VERTICES`` positions (a cost cap: a 20,000-vertex
polygon made each intersects query take seconds).

``check_item_geometry`` returns the GeoJSON text to store, written from the shape that
was checked, so what is stored is exactly what was validated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from embcat.catalog.errors import InvalidInput

LON_RANGE = (-180.0, 180.0)
LAT_RANGE = (-90.0, 90.0)
MAX_VERTICES = 10_000
OUT_OF_RANGE = "geometry is outside the WGS84 range (lon -180..180, lat -90..90; not EPSG:4326?)"
INVALID = "geometry is empty or invalid (self-intersecting?)"

_RING_TYPES = {"Polygon": 1, "MultiPolygon": 2}  # nesting depth of the rings' lists
_DEPTH = {
    "Point": 0,
    "MultiPoint": 1,
    "LineString": 1,
    "MultiLineString": 2,
    "Polygon": 2,
    "MultiPolygon": 3,
}


def _positions(coords: Any, depth: int, what: str, out: list[tuple[float, float]]) -> None:
    """Collect the positions of ``coords`` nested ``depth`` lists deep (InvalidInput if the
    structure or a number is wrong)."""
    if depth == 0:
        if not isinstance(coords, list | tuple) or len(coords) not in (2, 3):
            raise InvalidInput(f"{what}: a position must be [lon, lat]")
        if len(coords) == 3:
            raise InvalidInput(f"{what}: geometry has Z coordinates (2-D expected)")
        for v in coords:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidInput(f"{what}: coordinates must be numbers")
            if not math.isfinite(float(v)):
                raise InvalidInput(f"{what}: coordinates must be finite numbers")
        out.append((float(coords[0]), float(coords[1])))
        if len(out) > MAX_VERTICES:
            raise InvalidInput(f"{what}: geometry has more than {MAX_VERTICES} vertices")
        return
    if not isinstance(coords, list | tuple):
        raise InvalidInput(f"{what}: malformed coordinates")
    for part in coords:
        _positions(part, depth - 1, what, out)


def _check_rings(gtype: str, coords: Any, what: str) -> None:
    rings_depth = _RING_TYPES.get(gtype)
    if rings_depth is None:
        return
    polygons = [coords] if rings_depth == 1 else coords
    for polygon in polygons:
        if not isinstance(polygon, list | tuple) or not polygon:
            raise InvalidInput(f"{what}: a polygon needs at least one ring")
        for ring in polygon:
            if not isinstance(ring, list | tuple) or not ring:
                raise InvalidInput(f"{what}: a ring needs at least four positions")
            if list(ring[0]) != list(ring[-1]):
                raise InvalidInput(
                    f"{what}: ring not closed (its last position must repeat the first)"
                )
            if len(ring) < 4:
                raise InvalidInput(f"{what}: a ring needs at least four positions")


def _structure(geom: Any, what: str, out: list[tuple[float, float]], level: int = 0) -> None:
    if not isinstance(geom, Mapping) or not isinstance(geom.get("type"), str):
        raise InvalidInput(f"{what}: a geometry must be a GeoJSON geometry object")
    gtype = geom["type"]
    if gtype == "GeometryCollection":
        parts = geom.get("geometries")
        if level > 0 or not isinstance(parts, list):
            raise InvalidInput(f"{what}: malformed GeometryCollection")
        for part in parts:
            _structure(part, what, out, level + 1)
        return
    if gtype not in _DEPTH:
        raise InvalidInput(f"{what}: unknown geometry type {gtype!r}")
    coords = geom.get("coordinates")
    _positions(coords, _DEPTH[gtype], what, out)
    _check_rings(gtype, coords, what)


def too_many_positions(geom: Any, cap: int = MAX_VERTICES) -> bool:
    """Whether a raw (JSON-decoded) geometry holds more than ``cap`` positions: a cheap
    iterative walk that stops at the cap, for use before any model validation (geojson
    models cost about a second of CPU per 20,000 positions)."""
    count = 0
    stack = [geom]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            if node and all(isinstance(v, int | float) for v in node[:3]):
                count += 1
                if count > cap:
                    return True
            else:
                stack.extend(node)
    return False


def check_geometry(geom: Any, what: str = "geometry", *, in_range: bool = True) -> Any:
    """The shapely geometry of a GeoJSON geometry that passes the rule (InvalidInput names
    the fault). ``in_range=False`` skips the WGS84 range (search geometries may reach past
    it; nothing stored does)."""
    import shapely
    import shapely.geometry

    positions: list[tuple[float, float]] = []
    _structure(geom, what, positions)
    try:
        shape = shapely.geometry.shape(geom)
    except Exception as exc:  # shapely raises several types for malformed input
        raise InvalidInput(f"{what}: invalid geometry: {exc}") from None
    if shape.is_empty:
        raise InvalidInput(f"{what}: the geometry is empty")
    if not shape.is_valid:
        reason = shapely.is_valid_reason(shape)
        raise InvalidInput(f"{what}: {INVALID}: {reason}")
    if in_range:
        lons = [p[0] for p in positions]
        lats = [p[1] for p in positions]
        if (
            min(lons) < LON_RANGE[0]
            or max(lons) > LON_RANGE[1]
            or min(lats) < LAT_RANGE[0]
            or max(lats) > LAT_RANGE[1]
        ):
            raise InvalidInput(f"{what}: {OUT_OF_RANGE}")
    return shape


def check_item_geometry(geom: Any, what: str = "geometry") -> tuple[str, list[float]]:
    """(GeoJSON text to store, bounds) of an item's geometry that passes the rule."""
    shape = check_geometry(geom, what)
    return geojson_text(geom), [float(v) for v in shape.bounds]


def geojson_text(geom: Mapping[str, Any]) -> str:
    """The geometry as GeoJSON text with only its own members (type + coordinates or
    geometries): foreign members are not stored in the geometry column."""
    if geom["type"] == "GeometryCollection":
        parts = [json.loads(geojson_text(g)) for g in geom["geometries"]]
        return json.dumps({"type": "GeometryCollection", "geometries": parts})
    return json.dumps({"type": geom["type"], "coordinates": geom["coordinates"]})
