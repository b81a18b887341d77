"""Search values: timestamps and intervals, bbox and geometry literals, nesting caps.

The checks every search path applies to the values a request carries, each with one
message (a bbox that is not 4 or 6 numbers, a timestamp that is not RFC 3339, JSON or CQL2
text nested past the caps), and their SQL literals (``sql.Literal``: psycopg quotes them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from embcat.catalog.errors import InvalidInput
from embcat.catalog.geometry import check_geometry, geojson_text

# Nesting caps on hostile input: the translator and the serialisers recurse (Python's
# recursion limit; the Rust CQL2 text parser crashes the process past a few thousand
# parentheses), so depth is checked first, iteratively, and answered with a 400.
MAX_JSON_DEPTH = 100  # objects + arrays: a CQL2 ``not`` level is two, a polygon six
MAX_TEXT_DEPTH = 50  # parentheses (and ``NOT``s) in CQL2 text
_NOT_TOKEN = re.compile(r"\bnot\b", re.IGNORECASE)
# The one message of a bbox that is not 4 or 6 numbers, whatever route it came by.
BBOX_MESSAGE = "bbox must be 4 or 6 numbers (minx,miny,maxx,maxy or with min/max z), got {!r}"
TRUE = sql.SQL("TRUE")
FALSE = sql.SQL("FALSE")

# --------------------------------------------------------------------------- values


def parse_timestamp(value: str) -> datetime:
    """An RFC 3339 timestamp (or a date) as an aware datetime; InvalidInput otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"invalid timestamp {value!r}")
    text = value.strip().replace("z", "Z")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"invalid timestamp {value!r} (expected RFC 3339)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def parse_interval(value: str) -> tuple[datetime | None, datetime | None]:
    """``a``, ``a/b``, ``../b``, ``a/..`` -> (start, end); None is open."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("datetime must be a timestamp or an interval a/b")
    parts = value.strip().split("/")
    if len(parts) == 1:
        t = parse_timestamp(parts[0])
        return t, t
    if len(parts) != 2:
        raise InvalidInput(f"invalid datetime interval {value!r}")
    start = None if parts[0] in ("", "..") else parse_timestamp(parts[0])
    end = None if parts[1] in ("", "..") else parse_timestamp(parts[1])
    if start is None and end is None:
        raise InvalidInput(f"datetime interval {value!r} is open at both ends")
    if start is not None and end is not None and start > end:
        raise InvalidInput(f"datetime interval {value!r} ends before it starts")
    return start, end


def _check_geometry(geom: Any) -> str:
    """GeoJSON geometry text after checking it with catalog.geometry's rule (closed rings,
    valid, at most MAX_VERTICES; a search geometry may reach past the WGS84 range)."""
    if not isinstance(geom, dict) or "type" not in geom:
        raise InvalidInput("a geometry must be a GeoJSON geometry object")
    check_geometry(geom, "search geometry", in_range=False)
    return geojson_text(geom)


def geometry_literal(geom: dict[str, Any]) -> sql.Composable:
    return sql.SQL("ST_SetSRID(ST_GeomFromGeoJSON({}), 4326)").format(
        sql.Literal(_check_geometry(geom))
    )


def bbox_bounds(bbox: Sequence[Any]) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a bbox of 4 or 6 numbers (z dropped), checked: finite,
    latitudes within [-90, 90] with min <= max. ``minx > maxx`` crosses the antimeridian."""
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise InvalidInput(BBOX_MESSAGE.format(bbox)) from None
    if len(values) == 6:
        values = [values[0], values[1], values[3], values[4]]
    if len(values) != 4:
        raise InvalidInput(BBOX_MESSAGE.format(bbox))
    minx, miny, maxx, maxy = values
    if not all(math.isfinite(v) for v in values):
        raise InvalidInput(f"bbox {bbox!r}: numbers must be finite")
    if miny > maxy or not (-90 <= miny <= 90 and -90 <= maxy <= 90):
        raise InvalidInput(f"bbox {bbox!r}: latitudes must be within [-90, 90] with min <= max")
    return minx, miny, maxx, maxy


def bbox_literal(bbox: Sequence[Any]) -> sql.Composable:
    minx, miny, maxx, maxy = bbox_bounds(bbox)
    if minx > maxx:  # crosses the antimeridian: two boxes
        return sql.SQL("ST_Union({}, {})").format(
            _envelope(minx, miny, 180.0, maxy), _envelope(-180.0, miny, maxx, maxy)
        )
    return _envelope(minx, miny, maxx, maxy)


def _envelope(a: float, b: float, c: float, d: float) -> sql.Composable:
    return sql.SQL("ST_MakeEnvelope({}, {}, {}, {}, 4326)").format(
        *(sql.Literal(v) for v in (a, b, c, d))
    )


def ts_literal(value: datetime | None, open_end: str) -> sql.Composable:
    if value is None:
        return sql.SQL("{}::timestamptz").format(sql.Literal(open_end))
    return sql.SQL("{}::timestamptz").format(sql.Literal(value.isoformat()))


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value (objects and arrays), computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest  # deep enough to refuse: stop walking
        stack.extend((child, depth) for child in children)
    return deepest


def check_depth(value: Any, name: str = "filter") -> None:
    """InvalidInput when ``value`` nests objects/arrays deeper than MAX_JSON_DEPTH."""
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidInput(f"{name} is nested too deeply (at most {MAX_JSON_DEPTH} levels)")


def check_text_depth(text: str) -> None:
    """InvalidInput when CQL2 text nests parentheses (or NOTs) deeper than MAX_TEXT_DEPTH."""
    depth = deepest = 0
    quoted = False
    bare: list[str] = []
    for ch in text:
        if ch == "'":
            quoted = not quoted  # '' inside a literal toggles twice: still right
        elif not quoted:
            bare.append(ch)
            if ch == "(":
                depth += 1
                deepest = max(deepest, depth)
            elif ch == ")":
                depth -= 1
    if deepest > MAX_TEXT_DEPTH or len(_NOT_TOKEN.findall("".join(bare))) > MAX_TEXT_DEPTH:
        raise InvalidInput(f"filter is nested too deeply (at most {MAX_TEXT_DEPTH} levels)")


def spatial_filter(q: Any) -> sql.Composable | None:
    """The geometry of the search's ``bbox`` or ``intersects`` (EPSG:4326), if it has one."""
    check_depth(q.intersects, "intersects")
    if q.bbox is not None and q.intersects is not None:
        raise InvalidInput("bbox and intersects are mutually exclusive")
    if q.bbox is not None:
        return bbox_literal(q.bbox)
    if q.intersects is not None:
        return geometry_literal(q.intersects)
    return None
