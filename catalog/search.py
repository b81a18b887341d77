"""STAC item search over the ``items`` table: filters, CQL2, sorting and keyset paging.

``where_clause(SearchQuery)`` composes every filter of a search (collections, ids, bbox,
intersects, datetime, CQL2 ``filter``, ``query``, free-text ``q``) into one
``psycopg.sql.Composable`` over ``items i``; every value is embedded as ``sql.Literal``
(psycopg quotes it), property names are checked against a safe pattern and also passed as
literals into the jsonb path, so a hostile request cannot inject SQL.

Why a hand-written CQL2 walker: ``cql2`` (the Rust library) parses, validates and
normalises CQL2 text and JSON, and we use it for that; its ``to_sql`` however renders
values inline as text, knows nothing about our columns (``datetime`` vs
``properties->'x'``, PostGIS geometry, jsonb types) and does not produce parameterised
SQL. So the normalised CQL2 JSON AST is translated here to psycopg.sql.

Paging is keyset paging on the sort key plus ``(collection_id, id)``: the token carries
the key of the last (next) or first (prev) row of the page, so pages stay stable while
items are inserted. Tokens are opaque (base64url JSON) and bound to the sort order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cql2
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from embcat.catalog.errors import InvalidInput, translated
from embcat.catalog.filters import ITEMS, Filter, interval_clause
from embcat.catalog.geometry import check_geometry, geojson_text
from embcat.catalog.stac import ITEM_COLUMNS, item_to_stac

PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]{0,255}$")
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


@dataclass
class SearchQuery:
    """One item search, as the API received it (GET or POST, already decoded)."""

    collections: list[str] | None = None
    ids: list[str] | None = None
    bbox: Sequence[float] | None = None
    intersects: dict[str, Any] | None = None
    datetime: str | None = None
    filter: dict[str, Any] | str | None = None
    filter_lang: str | None = None
    query: dict[str, dict[str, Any]] | None = None
    q: list[str] | str | None = None
    sortby: list[dict[str, str]] | None = None
    fields: dict[str, Any] | None = None
    limit: int = 10
    token: str | None = None


@dataclass
class SearchPage:
    features: list[dict[str, Any]]
    next_token: str | None = None
    prev_token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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


def bbox_literal(bbox: Sequence[Any]) -> sql.Composable:
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
    if minx > maxx:  # crosses the antimeridian: two boxes
        return sql.SQL("ST_Union({}, {})").format(
            _envelope(minx, miny, 180.0, maxy), _envelope(-180.0, miny, maxx, maxy)
        )
    return _envelope(minx, miny, maxx, maxy)


def _envelope(a: float, b: float, c: float, d: float) -> sql.Composable:
    return sql.SQL("ST_MakeEnvelope({}, {}, {}, {}, 4326)").format(
        *(sql.Literal(v) for v in (a, b, c, d))
    )


def _ts(value: datetime | None, open_end: str) -> sql.Composable:
    if value is None:
        return sql.SQL("{}::timestamptz").format(sql.Literal(open_end))
    return sql.SQL("{}::timestamptz").format(sql.Literal(value.isoformat()))


def datetime_clause(value: str) -> sql.Composable:
    """Items whose datetime (or start/end range) intersects the instant or interval."""
    return interval_clause(parse_interval(value), ITEMS)


# --------------------------------------------------------------------------- CQL2


@dataclass
class _Operand:
    expr: sql.Composable
    kind: str  # text | num | bool | ts | geom | jsonb | interval | array | null
    key: str | None = None  # jsonb: the property key
    value: Any = None  # literals: the Python value
    literal: bool = False
    end: sql.Composable | None = None  # interval: end expression


COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("i.id", "text"),
    "collection": ("i.collection_id", "text"),
    "geometry": ("i.geometry", "geom"),
    "datetime": ("i.datetime", "ts"),
    "start_datetime": ("i.start_datetime", "ts"),
    "end_datetime": ("i.end_datetime", "ts"),
}


def property_name(name: Any) -> str:
    if not isinstance(name, str) or not PROPERTY_NAME.match(name):
        raise InvalidInput(f"invalid property name {name!r}")
    if name.startswith("properties."):
        name = name[len("properties.") :]
        if not PROPERTY_NAME.match(name):
            raise InvalidInput(f"invalid property name {name!r}")
    return name


def _jsonb(key: str) -> sql.Composable:
    return sql.SQL("(i.properties -> {})").format(sql.Literal(key))


def _jsonb_text(key: str) -> sql.Composable:
    return sql.SQL("(i.properties ->> {})").format(sql.Literal(key))


def _property(name: Any) -> _Operand:
    key = property_name(name)
    if key in COLUMNS:
        col, kind = COLUMNS[key]
        return _Operand(sql.SQL(col), kind, key=key)
    return _Operand(_jsonb(key), "jsonb", key=key)


def _literal(value: Any) -> _Operand:
    if value is None:
        return _Operand(sql.SQL("NULL"), "null", literal=True)
    if isinstance(value, bool):
        return _Operand(sql.Literal(value), "bool", value=value, literal=True)
    if isinstance(value, int | float):
        return _Operand(
            sql.SQL("{}::numeric").format(sql.Literal(value)), "num", value=value, literal=True
        )
    if isinstance(value, str):
        return _Operand(
            sql.SQL("{}::text").format(sql.Literal(value)), "text", value=value, literal=True
        )
    if isinstance(value, list):
        return _Operand(sql.SQL("NULL"), "array", value=value, literal=True)
    raise InvalidInput(f"unsupported value {value!r}")


def _as_text(o: _Operand) -> sql.Composable:
    if o.kind == "text":
        return o.expr
    if o.kind == "jsonb" and o.key is not None:
        return _jsonb_text(o.key)
    raise InvalidInput(f"expected a string operand, got a {o.kind}")


def _as_ts(o: _Operand) -> sql.Composable:
    if o.kind == "ts":
        return o.expr
    if o.kind == "text" and o.literal:
        return _ts(parse_timestamp(o.value), "")
    if o.kind == "jsonb" and o.key is not None:
        return sql.SQL("({})::timestamptz").format(_jsonb_text(o.key))
    raise InvalidInput(f"expected a timestamp operand, got a {o.kind}")


def _as_jsonb_value(o: _Operand) -> sql.Composable:
    return sql.SQL("{}::jsonb").format(sql.Literal(json.dumps(o.value)))


COMPARISONS = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _compare(op: str, a: _Operand, b: _Operand) -> sql.Composable:
    sym = sql.SQL(COMPARISONS[op])
    if a.kind == "null" or b.kind == "null":
        raise InvalidInput("comparison with NULL: use IS NULL")
    if a.kind == "jsonb" and b.kind != "jsonb" and a.literal is False and b.literal:
        return _compare_jsonb(sym, a, b)
    if b.kind == "jsonb" and a.kind != "jsonb" and a.literal:
        return _compare_jsonb(_flip(op), b, a)
    kinds = {a.kind, b.kind}
    if kinds <= {"ts", "text"} and "ts" in kinds:
        return sql.SQL("({} {} {})").format(_as_ts(a), sym, _as_ts(b))
    if "jsonb" in kinds and kinds <= {"jsonb", "text"}:
        return sql.SQL("({} {} {})").format(_as_text(a), sym, _as_text(b))
    if "jsonb" in kinds and kinds <= {"jsonb", "ts"}:
        return sql.SQL("({} {} {})").format(_as_ts(a), sym, _as_ts(b))
    if a.kind == b.kind and a.kind in ("text", "num", "bool", "ts", "jsonb"):
        return sql.SQL("({} {} {})").format(a.expr, sym, b.expr)
    raise InvalidInput(f"cannot compare a {a.kind} with a {b.kind}")


def _number(value: Any) -> float | int | None:
    if not isinstance(value, str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return int(number) if number.is_integer() and "." not in value else number


def _flip(op: str) -> sql.SQL:
    return sql.SQL({"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, COMPARISONS[op]))


def _compare_jsonb(sym: sql.SQL, prop: _Operand, lit: _Operand) -> sql.Composable:
    assert prop.key is not None
    if lit.kind == "text":
        as_text = sql.SQL("({} {} {})").format(_jsonb_text(prop.key), sym, lit.expr)
        number = _number(lit.value)
        if number is None:
            return as_text
        # "50" against a numeric property compares as a number (the Query extension's
        # values often arrive as strings), against a string property as text.
        return sql.SQL(
            "(CASE WHEN jsonb_typeof({j}) = 'number' THEN {j} {op} {v} ELSE {t} END)"
        ).format(
            j=prop.expr,
            op=sym,
            v=sql.SQL("{}::jsonb").format(sql.Literal(json.dumps(number))),
            t=as_text,
        )
    if lit.kind == "num":
        # jsonb ordering never raises; the type guard keeps strings out of numeric results.
        return sql.SQL("({j} {op} {v} AND jsonb_typeof({j}) = 'number')").format(
            j=prop.expr, op=sym, v=_as_jsonb_value(lit)
        )
    if lit.kind == "bool":
        return sql.SQL("({} {} {})").format(prop.expr, sym, _as_jsonb_value(lit))
    if lit.kind == "ts":
        return sql.SQL("({} {} {})").format(_as_ts(prop), sym, lit.expr)
    raise InvalidInput(f"cannot compare property {prop.key!r} with a {lit.kind}")


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


def _geom(node: Any) -> sql.Composable:
    if isinstance(node, dict) and "property" in node:
        o = _property(node["property"])
        if o.kind != "geom":
            raise InvalidInput(f"property {node['property']!r} is not a geometry")
        return o.expr
    if isinstance(node, dict) and "bbox" in node:
        return bbox_literal(node["bbox"])
    if isinstance(node, dict) and "type" in node:
        return geometry_literal(node)
    raise InvalidInput(f"expected a geometry, got {node!r}")


def _temporal(node: Any) -> tuple[sql.Composable, sql.Composable]:
    """(start, end) of an instant or interval operand."""
    if isinstance(node, dict) and "property" in node:
        key = property_name(node["property"])
        if key == "datetime":
            return (
                sql.SQL("coalesce(i.start_datetime, i.datetime)"),
                sql.SQL("coalesce(i.end_datetime, i.datetime)"),
            )
        o = _property(node["property"])
        t = _as_ts(o)
        return t, t
    if isinstance(node, dict) and "interval" in node:
        bounds = node["interval"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise InvalidInput("an interval needs two bounds")
        out = []
        for bound, open_end in zip(bounds, ("-infinity", "infinity"), strict=True):
            if isinstance(bound, dict):
                out.append(_temporal(bound)[0])
            elif bound == "..":
                out.append(_ts(None, open_end))
            else:
                out.append(_ts(parse_timestamp(bound), open_end))
        return out[0], out[1]
    if isinstance(node, dict) and ("timestamp" in node or "date" in node):
        t = _ts(parse_timestamp(node.get("timestamp") or node["date"]), "")
        return t, t
    if isinstance(node, str):
        t = _ts(parse_timestamp(node), "")
        return t, t
    raise InvalidInput(f"expected a temporal operand, got {node!r}")


def _operand(node: Any) -> _Operand:
    if isinstance(node, dict):
        if "property" in node:
            return _property(node["property"])
        if "timestamp" in node or "date" in node:
            t = parse_timestamp(node.get("timestamp") or node["date"])
            return _Operand(_ts(t, ""), "ts", value=t, literal=True)
        if "op" in node and str(node["op"]).lower() == "casei":
            args = node.get("args") or []
            if len(args) != 1:
                raise InvalidInput("casei takes one argument")
            inner = _operand(args[0])
            return _Operand(
                sql.SQL("lower({})").format(_as_text(inner)),
                "text",
                value=inner.value.lower() if inner.literal else None,
                literal=inner.literal,
            )
        if "type" in node or "bbox" in node:
            return _Operand(_geom(node), "geom", literal=True)
        if "interval" in node:
            s, e = _temporal(node)
            return _Operand(s, "interval", end=e, literal=True)
        raise InvalidInput(f"unsupported expression {node!r}")
    return _literal(node)


def _args(node: dict[str, Any], n: int | None = None) -> list[Any]:
    args = node.get("args")
    if not isinstance(args, list) or (n is not None and len(args) != n):
        raise InvalidInput(f"operator {node.get('op')!r} needs {n} argument(s)")
    return args


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def cql2_to_sql(node: Any) -> sql.Composable:
    """Translate a (normalised) CQL2 JSON expression to SQL over ``items i``."""
    if isinstance(node, bool):
        return TRUE if node else FALSE
    if not isinstance(node, dict) or "op" not in node:
        raise InvalidInput(f"a filter must be a CQL2 boolean expression, got {node!r}")
    op = str(node["op"]).lower()
    if op in ("and", "or"):
        args = _args(node)
        if not args:
            raise InvalidInput(f"{op} needs arguments")
        joined = sql.SQL(f" {op.upper()} ").join(cql2_to_sql(a) for a in args)
        return sql.SQL("({})").format(joined)
    if op == "not":
        return sql.SQL("(NOT {})").format(cql2_to_sql(_args(node, 1)[0]))
    if op in COMPARISONS:
        a, b = (_operand(x) for x in _args(node, 2))
        return _compare(op, a, b)
    if op == "isnull":
        o = _operand(_args(node, 1)[0])
        if o.kind == "jsonb":
            return sql.SQL("({j} IS NULL OR jsonb_typeof({j}) = 'null')").format(j=o.expr)
        return sql.SQL("({} IS NULL)").format(o.expr)
    if op in ("like", "ilike"):
        a, b = (_operand(x) for x in _args(node, 2))
        return sql.SQL("({} {} {})").format(
            _as_text(a), sql.SQL("LIKE" if op == "like" else "ILIKE"), _as_text(b)
        )
    if op == "between":
        args = _args(node, 3)
        a, lo, hi = (_operand(x) for x in args)
        return sql.SQL("({} AND {})").format(_compare(">=", a, lo), _compare("<=", a, hi))
    if op == "in":
        left, values = _args(node, 2)
        if not isinstance(values, list) or not values:
            raise InvalidInput("in needs a non-empty list of values")
        a = _operand(left)
        equal = sql.SQL(" OR ").join(_compare("=", a, _operand(v)) for v in values)
        if a.kind != "jsonb":
            return sql.SQL("({})").format(equal)
        # An array-valued property matches when it holds any of the values.
        singles = sql.Literal([json.dumps([v]) for v in values])
        return sql.SQL(
            "({eq} OR (jsonb_typeof({j}) = 'array' AND {j} @> ANY({s}::jsonb[])))"
        ).format(eq=equal, j=a.expr, s=singles)
    if op in SPATIAL:
        g1, g2 = (_geom(x) for x in _args(node, 2))
        return sql.SQL("{}({}, {})").format(sql.SQL(SPATIAL[op]), g1, g2)
    if op in TEMPORAL:
        (s1, e1), (s2, e2) = (_temporal(x) for x in _args(node, 2))
        return sql.SQL("(" + TEMPORAL[op]() + ")").format(s1=s1, e1=e1, s2=s2, e2=e2)
    if op in ("a_equals", "a_contains", "a_containedby", "a_overlaps"):
        left, right = _args(node, 2)
        a = _operand(left)
        if a.kind != "jsonb" or not isinstance(right, list):
            raise InvalidInput(f"{op} compares an array property with a list of values")
        arr = sql.SQL("{}::jsonb").format(sql.Literal(json.dumps(right)))
        guard = sql.SQL("jsonb_typeof({}) = 'array'").format(a.expr)
        if op == "a_overlaps":
            singles = sql.Literal([json.dumps([v]) for v in right])
            return sql.SQL("({} AND {} @> ANY({}::jsonb[]))").format(guard, a.expr, singles)
        sym = {"a_equals": "=", "a_contains": "@>", "a_containedby": "<@"}[op]
        return sql.SQL("({} AND {} {} {})").format(guard, a.expr, sql.SQL(sym), arr)
    raise InvalidInput(f"unsupported CQL2 operator {node['op']!r}")


def _legacy(node: Any) -> Any:
    """Rewrite the pre-1.0 ``between`` form ``[x, [lo, hi]]`` to ``[x, lo, hi]``."""
    if isinstance(node, dict):
        node = {k: _legacy(v) for k, v in node.items()}
        args = node.get("args")
        if (
            str(node.get("op", "")).lower() == "between"
            and isinstance(args, list)
            and len(args) == 2
            and isinstance(args[1], list)
            and len(args[1]) == 2
        ):
            node["args"] = [args[0], *args[1]]
        return node
    if isinstance(node, list):
        return [_legacy(v) for v in node]
    return node


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


def _check_text_depth(text: str) -> None:
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


def normalise_filter(value: dict[str, Any] | str, lang: str | None = None) -> Any:
    """Parse and validate a CQL2 filter (text or JSON) into CQL2 JSON."""
    if isinstance(value, str) and (lang == "cql2-json" or value.lstrip().startswith("{")):
        try:  # CQL2 JSON as text: parsed here, so that its depth is checked like a body's
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise InvalidInput("invalid CQL2 filter: not valid JSON") from None
        if not isinstance(value, dict | bool):
            raise InvalidInput("filter must be CQL2 text or a CQL2 JSON object")
    if isinstance(value, str):
        _check_text_depth(value)
    else:
        check_depth(value)
    if isinstance(value, dict):
        value = _legacy(value)
    try:
        if isinstance(value, str):
            expr = cql2.parse_text(value)
        elif isinstance(value, dict | bool):
            expr = cql2.parse_json(json.dumps(value))
        else:
            raise InvalidInput("filter must be CQL2 text or a CQL2 JSON object")
        # No expr.validate(): it recompiles the CQL2 JSON schema on every call (~0.4 s);
        # the translator below rejects every operator and operand shape it does not know.
        out = expr.to_json()
    except (cql2.ParseError, cql2.ValidationError, ValueError, RecursionError) as exc:
        message = str(exc).strip().splitlines()
        raise InvalidInput(
            "invalid CQL2 filter: " + " ".join(m.strip() for m in message if m.strip())[:500]
        ) from None
    check_depth(out)  # what the parser made of it (a chain of NOTs, say)
    return out


# --------------------------------------------------------------------------- query / q

QUERY_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def query_to_cql2(query: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Query extension's ``{"prop": {"op": value}}`` as CQL2 JSON."""
    if not isinstance(query, dict):
        raise InvalidInput("query must be an object of {property: {operator: value}}")
    parts: list[dict[str, Any]] = []
    for name, ops in query.items():
        if not isinstance(ops, dict):
            raise InvalidInput(f"query for {name!r} must be an object of operators")
        prop = {"property": name}
        for op, value in ops.items():
            if op in QUERY_OPS:
                parts.append({"op": QUERY_OPS[op], "args": [prop, value]})
            elif op in ("startsWith", "endsWith", "contains"):
                if not isinstance(value, str):
                    raise InvalidInput(f"query operator {op} needs a string")
                v = _like_escape(value)
                pattern = {"startsWith": v + "%", "endsWith": "%" + v, "contains": f"%{v}%"}[op]
                parts.append({"op": "like", "args": [prop, pattern]})
            elif op == "in":
                if not isinstance(value, list):
                    raise InvalidInput("query operator in needs a list")
                parts.append({"op": "in", "args": [prop, value]})
            else:
                raise InvalidInput(f"unknown query operator {op!r}")
    return {"op": "and", "args": parts} if parts else True  # type: ignore[return-value]


def free_text_clause(q: list[str] | str) -> sql.Composable:
    """Terms (OR) matched case-insensitively in title, description and keywords."""
    terms = [t.strip() for t in (q.split(",") if isinstance(q, str) else q) if t and t.strip()]
    if not terms:
        return TRUE
    haystack = sql.SQL(
        "concat_ws(' ', i.properties->>'title', i.properties->>'description',"
        " i.properties->>'keywords')"
    )
    return sql.SQL("({})").format(
        sql.SQL(" OR ").join(
            sql.SQL("{} ILIKE {}").format(haystack, sql.Literal(f"%{_like_escape(t)}%"))
            for t in terms
        )
    )


def spatial_filter(q: SearchQuery) -> sql.Composable | None:
    """The geometry of the search's ``bbox`` or ``intersects`` (EPSG:4326), if it has one."""
    check_depth(q.intersects, "intersects")
    if q.bbox is not None and q.intersects is not None:
        raise InvalidInput("bbox and intersects are mutually exclusive")
    if q.bbox is not None:
        return bbox_literal(q.bbox)
    if q.intersects is not None:
        return geometry_literal(q.intersects)
    return None


def where_clause(q: SearchQuery) -> sql.Composable:
    """Every filter of ``q`` as one boolean SQL expression over ``items i``
    (``catalog.filters.Filter``: built and rendered for the items table)."""
    return Filter.from_search(q).for_items()


# --------------------------------------------------------------------------- sorting / paging


@dataclass(frozen=True)
class SortKey:
    expr: sql.Composable
    kind: str  # text | ts | jsonb
    desc: bool
    name: str


MAX_SORT_FIELDS = 16  # PostgreSQL plans at most 1664 target columns; a user needs a few

SORTABLE_COLUMNS = {
    "id": ("i.id", "text"),
    "collection": ("i.collection_id", "text"),
    "datetime": ("i.datetime", "ts"),
    "start_datetime": ("i.start_datetime", "ts"),
    "end_datetime": ("i.end_datetime", "ts"),
}


def sort_keys(sortby: list[dict[str, str]] | None) -> list[SortKey]:
    """The ORDER BY keys: the requested ones, then collection and id as tie-breakers."""
    keys: list[SortKey] = []
    if not sortby:
        sortby = [{"field": "datetime", "direction": "desc"}]
    if len(sortby) > MAX_SORT_FIELDS:
        raise InvalidInput(f"sortby names {len(sortby)} fields; at most {MAX_SORT_FIELDS}")
    for entry in sortby:
        name = property_name(entry.get("field"))
        direction = str(entry.get("direction", "asc")).lower()
        if direction not in ("asc", "desc"):
            raise InvalidInput(f"sort direction must be asc or desc, got {direction!r}")
        if name in ("geometry",):
            raise InvalidInput("cannot sort by geometry")
        if name in SORTABLE_COLUMNS:
            col, kind = SORTABLE_COLUMNS[name]
            keys.append(SortKey(sql.SQL(col), kind, direction == "desc", name))
        else:
            keys.append(SortKey(_jsonb(name), "jsonb", direction == "desc", name))
    last_desc = keys[-1].desc
    names = {k.name for k in keys}
    for name in ("collection", "id"):
        if name not in names:
            col, kind = SORTABLE_COLUMNS[name]
            keys.append(SortKey(sql.SQL(col), kind, last_desc, name))
    return keys


def _fingerprint(keys: list[SortKey]) -> str:
    text = ",".join(f"{k.name}:{'d' if k.desc else 'a'}" for k in keys)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def encode_token(direction: str, values: list[Any], keys: list[SortKey]) -> str:
    raw = json.dumps({"d": direction, "k": values, "s": _fingerprint(keys)}, default=str)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, keys: list[SortKey]) -> tuple[str, list[Any]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        direction, values, fp = data["d"], data["k"], data["s"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidInput("invalid paging token") from None
    if direction not in ("next", "prev") or not isinstance(values, list):
        raise InvalidInput("invalid paging token")
    if fp != _fingerprint(keys) or len(values) != len(keys):
        raise InvalidInput("the paging token belongs to a different sort order")
    return direction, values


def _key_literal(key: SortKey, value: Any) -> sql.Composable:
    if key.kind == "ts":
        return _ts(parse_timestamp(value), "")
    if key.kind == "jsonb":
        return sql.SQL("{}::jsonb").format(sql.Literal(json.dumps(value)))
    if not isinstance(value, str):
        raise InvalidInput("invalid paging token")
    return sql.SQL("{}::text").format(sql.Literal(value))


def keyset_clause(keys: list[SortKey], values: list[Any], reverse: bool) -> sql.Composable:
    """Rows strictly after ``values`` in the ORDER BY of ``keys`` (reversed: before).

    NULL-aware, following PostgreSQL's defaults (ASC NULLS LAST, DESC NULLS FIRST).
    """
    ors: list[sql.Composable] = []
    equal_prefix: list[sql.Composable] = []
    for key, value in zip(keys, values, strict=True):
        desc = key.desc != reverse
        lit = None if value is None else _key_literal(key, value)
        if lit is None:
            after = sql.SQL("{} IS NOT NULL").format(key.expr) if desc else FALSE
            same = sql.SQL("{} IS NULL").format(key.expr)
        else:
            after = (
                sql.SQL("{} < {}").format(key.expr, lit)
                if desc
                else sql.SQL("({k} > {v} OR {k} IS NULL)").format(k=key.expr, v=lit)
            )
            same = sql.SQL("{} = {}").format(key.expr, lit)
        ors.append(sql.SQL("({})").format(sql.SQL(" AND ").join([*equal_prefix, after])))
        equal_prefix.append(same)
    clause = sql.SQL("({})").format(sql.SQL(" OR ").join(ors))
    first, first_value = keys[0], values[0]
    if first_value is not None and (first.desc != reverse):
        # Redundant bound on the leading key so that its index can be used.
        clause = sql.SQL("({} <= {} AND {})").format(
            first.expr, _key_literal(first, first_value), clause
        )
    return clause


def order_by(keys: list[SortKey], reverse: bool = False) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{} {}").format(k.expr, sql.SQL("DESC" if k.desc != reverse else "ASC"))
        for k in keys
    )


def _key_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "ts":
        return value.isoformat()
    return value


def search_items(
    conn: psycopg.Connection,
    q: SearchQuery,
    base_url: str,
    *,
    extra_where: sql.Composable | None = None,
) -> SearchPage:
    """One page of items matching ``q`` (STAC JSON), with next/prev tokens."""
    if q.limit < 1:
        raise InvalidInput("limit must be at least 1")
    keys = sort_keys(q.sortby)
    where = where_clause(q)
    if extra_where is not None:
        where = sql.SQL("({}) AND ({})").format(where, extra_where)
    direction, values = ("next", None) if not q.token else decode_token(q.token, keys)
    reverse = direction == "prev"
    if values is not None:
        where = sql.SQL("{} AND {}").format(where, keyset_clause(keys, values, reverse))
    key_cols = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(k.expr, sql.Identifier(f"_k{n}")) for n, k in enumerate(keys)
    )
    query = sql.SQL(
        "SELECT {cols}, {keys} FROM items i WHERE {where} ORDER BY {order} LIMIT {limit}"
    ).format(
        cols=ITEM_COLUMNS,
        keys=key_cols,
        where=where,
        order=order_by(keys, reverse),
        limit=sql.Literal(q.limit + 1),
    )
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query).fetchall()
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    if reverse:
        rows.reverse()

    def token_of(row: dict[str, Any], d: str) -> str:
        vals = [_key_value(k.kind, row[f"_k{n}"]) for n, k in enumerate(keys)]
        return encode_token(d, vals, keys)

    page = SearchPage(features=[item_to_stac(r, base_url) for r in rows])
    if rows:
        has_next = more if not reverse else True
        has_prev = (values is not None) if not reverse else more
        if has_next:
            page.next_token = token_of(rows[-1], "next")
        if has_prev:
            page.prev_token = token_of(rows[0], "prev")
    return page


# --------------------------------------------------------------------------- fields


DEFAULT_FIELDS = ("type", "stac_version", "id", "collection", "geometry", "bbox", "links", "assets")
MINIMAL_FIELDS = ("type", "stac_version", "id", "collection")


def apply_fields(item: dict[str, Any], fields: dict[str, Any] | None) -> dict[str, Any]:
    """The Fields extension.

    ``include`` given: the minimal fields (type, stac_version, id, collection) plus those
    included; excludes apply except where an include is equal or more specific. Only
    ``exclude``: everything but the excluded fields, or (when ``include`` was given as
    null/[]) the default set (type, stac_version, id, collection, geometry, bbox, links,
    assets, properties.datetime) minus the excluded. Neither: the default set.
    """
    if fields is None:
        return item
    include = [f for f in fields.get("include") or [] if f]
    exclude = [f for f in fields.get("exclude") or [] if f]
    out: dict[str, Any]
    if include:
        out = {k: item[k] for k in MINIMAL_FIELDS if k in item}
        for path in include:
            _copy_path(item, out, path.split("."))
    elif exclude and not fields.get("include_given"):
        out = json.loads(json.dumps(item))
    else:
        out = {k: item[k] for k in DEFAULT_FIELDS if k in item}
        props = item.get("properties") or {}
        out["properties"] = {
            k: props[k] for k in ("datetime", "start_datetime", "end_datetime") if k in props
        }
    for path in exclude:
        if any(inc == path or inc.startswith(path + ".") for inc in include):
            if "." not in path and isinstance(out.get(path), dict):
                continue  # a more specific include keeps its part of the object
            continue
        _drop_path(out, path.split("."))
    return out


def _copy_path(src: dict[str, Any], dst: dict[str, Any], parts: list[str]) -> None:
    head = parts[0]
    if head not in src:
        # "properties.x" may also be given as "x"
        if (
            len(parts) == 1
            and isinstance(src.get("properties"), dict)
            and head in src["properties"]
            and src is not dst
        ):
            dst.setdefault("properties", {})[head] = src["properties"][head]
        return
    if len(parts) == 1:
        dst[head] = src[head]
        return
    if isinstance(src[head], dict):
        child = dst.setdefault(head, {})
        if isinstance(child, dict):
            _copy_path(src[head], child, parts[1:])


def _drop_path(obj: dict[str, Any], parts: list[str]) -> None:
    if len(parts) == 1:
        obj.pop(parts[0], None)
    elif isinstance(obj.get(parts[0]), dict):
        _drop_path(obj[parts[0]], parts[1:])


# --------------------------------------------------------------------------- queryables

JSON_TYPES = {
    "string": "string",
    "number": "number",
    "boolean": "boolean",
    "array": "array",
    "object": "object",
}


def queryables(
    conn: psycopg.Connection, collection_id: str | None = None, sample: int = 2000
) -> dict[str, dict[str, Any]]:
    """Queryable properties derived from the data: key -> JSON schema fragment."""
    out: dict[str, dict[str, Any]] = {
        "id": {"title": "Item ID", "type": "string"},
        "collection": {"title": "Collection ID", "type": "string"},
        # self-contained (OGC API - Features - Part 5 "geometry-any"): clients such as STAC
        # Browser dereference a $ref to geojson.org, which fails offline
        "geometry": {
            "title": "Geometry",
            "format": "geometry-any",
            "x-ogc-role": "primary-geometry",
        },
        "datetime": {"title": "Acquisition time", "type": "string", "format": "date-time"},
    }
    where = (
        sql.SQL("TRUE")
        if collection_id is None
        else sql.SQL("collection_id = {}").format(sql.Literal(collection_id))
    )
    query = sql.SQL(
        "SELECT k.key, jsonb_typeof(k.value) AS t, count(*) FROM"
        " (SELECT properties FROM items WHERE {where} LIMIT {n}) s,"
        " jsonb_each(s.properties) k GROUP BY 1, 2 ORDER BY 1, 3 DESC"
    ).format(where=where, n=sql.Literal(sample))
    with translated():
        rows = conn.execute(query).fetchall()
    for key, typ, _count in rows:
        if key in out or typ not in JSON_TYPES:
            continue
        entry: dict[str, Any] = {"type": JSON_TYPES[typ]}
        if key in ("start_datetime", "end_datetime", "created", "updated") or key.endswith(
            ":datetime"
        ):
            entry["format"] = "date-time"
        out[key] = entry
    return out


# --------------------------------------------------------------------------- numberMatched

EXACT_COUNT_LIMIT = 10_000


def estimate_matched(conn: psycopg.Connection, q: SearchQuery) -> int:
    """The planner's estimate of the items matching ``q`` (no rows are read)."""
    query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM items i WHERE {}").format(where_clause(q))
    with translated(), conn.cursor() as cur:
        plan = cur.execute(query).fetchone()
    return int(plan[0][0]["Plan"]["Plan Rows"]) if plan else 0


def count_matched(
    conn: psycopg.Connection, q: SearchQuery, *, limit: int = EXACT_COUNT_LIMIT
) -> tuple[int, bool]:
    """``(count, estimated)`` of the items matching ``q`` (paging token ignored): counted
    exactly while at most ``limit`` rows match (the count stops there), otherwise the
    planner's row estimate, flagged ``estimated`` (like pgstac's context)."""
    where = where_clause(q)
    counted = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM items i WHERE {} LIMIT {}) m").format(
        where, sql.Literal(limit + 1)
    )
    with translated(), conn.cursor() as cur:
        row = cur.execute(counted).fetchone()
        n = int(row[0]) if row else 0
        if n <= limit:
            return n, False
        plan = cur.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM items i WHERE {}").format(where)
        ).fetchone()
    estimate = int(plan[0][0]["Plan"]["Plan Rows"]) if plan else n
    return max(estimate, n), True
