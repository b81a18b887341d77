"""The spatial and temporal functions of the CQL2 translator (``catalog.search_cql2``).

``SPATIAL`` maps ``s_*`` to PostGIS predicates over ``geometry_expr`` operands (a geometry
property, a bbox or a GeoJSON literal); ``TEMPORAL`` holds the ``t_*`` relations between
the ``(start, end)`` bounds ``temporal_bounds`` gives an instant, an interval or a property
(an item's ``datetime`` is its ``start_datetime`` .. ``end_datetime`` range when it has one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import sql

from embcat.catalog.errors import InvalidInput
from embcat.catalog.search_cql2_operands import as_ts, property_name, property_operand
from embcat.catalog.search_values import (
    bbox_literal,
    geometry_literal,
    parse_timestamp,
    ts_literal,
)

SPATIAL = {
    "s_intersects": "ST_Intersects",
    "s_equals": "ST_Equals",
    "s_disjoint": "ST_Disjoint",
    "s_touches": "ST_Touches",
    "s_within": "ST_Within",
    "s_overlaps": "ST_Overlaps",
    "s_crosses": "ST_Crosses",
    "s_contains": "ST_Contains",
}

TEMPORAL: dict[str, Callable[..., str]] = {
    "t_before": lambda: "{e1} < {s2}",
    "t_after": lambda: "{s1} > {e2}",
    "t_meets": lambda: "{e1} = {s2}",
    "t_metby": lambda: "{s1} = {e2}",
    "t_overlaps": lambda: "({s1} < {s2} AND {s2} < {e1} AND {e1} < {e2})",
    "t_overlappedby": lambda: "({s2} < {s1} AND {s1} < {e2} AND {e2} < {e1})",
    "t_starts": lambda: "({s1} = {s2} AND {e1} < {e2})",
    "t_startedby": lambda: "({s1} = {s2} AND {e1} > {e2})",
    "t_during": lambda: "({s1} > {s2} AND {e1} < {e2})",
    "t_contains": lambda: "({s1} < {s2} AND {e1} > {e2})",
    "t_finishes": lambda: "({s1} > {s2} AND {e1} = {e2})",
    "t_finishedby": lambda: "({s1} < {s2} AND {e1} = {e2})",
    "t_equals": lambda: "({s1} = {s2} AND {e1} = {e2})",
    "t_disjoint": lambda: "NOT ({s1} <= {e2} AND {e1} >= {s2})",
    "t_intersects": lambda: "({s1} <= {e2} AND {e1} >= {s2})",
    "anyinteracts": lambda: "({s1} <= {e2} AND {e1} >= {s2})",
}


def geometry_expr(node: Any) -> sql.Composable:
    if isinstance(node, dict) and "property" in node:
        o = property_operand(node["property"])
        if o.kind != "geom":
            raise InvalidInput(f"property {node['property']!r} is not a geometry")
        return o.expr
    if isinstance(node, dict) and "bbox" in node:
        return bbox_literal(node["bbox"])
    if isinstance(node, dict) and "type" in node:
        return geometry_literal(node)
    raise InvalidInput(f"expected a geometry, got {node!r}")


def temporal_bounds(node: Any) -> tuple[sql.Composable, sql.Composable]:
    """(start, end) of an instant or interval operand."""
    if isinstance(node, dict) and "property" in node:
        key = property_name(node["property"])
        if key == "datetime":
            return (
                sql.SQL("coalesce(i.start_datetime, i.datetime)"),
                sql.SQL("coalesce(i.end_datetime, i.datetime)"),
            )
        o = property_operand(node["property"])
        t = as_ts(o)
        return t, t
    if isinstance(node, dict) and "interval" in node:
        bounds = node["interval"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise InvalidInput("an interval needs two bounds")
        out = []
        for bound, open_end in zip(bounds, ("-infinity", "infinity"), strict=True):
            if isinstance(bound, dict):
                out.append(temporal_bounds(bound)[0])
            elif bound == "..":
                out.append(ts_literal(None, open_end))
            else:
                out.append(ts_literal(parse_timestamp(bound), open_end))
        return out[0], out[1]
    if isinstance(node, dict) and ("timestamp" in node or "date" in node):
        t = ts_literal(parse_timestamp(node.get("timestamp") or node["date"]), "")
        return t, t
    if isinstance(node, str):
        t = ts_literal(parse_timestamp(node), "")
        return t, t
    raise InvalidInput(f"expected a temporal operand, got {node!r}")
