"""CQL2 (and the Query extension, free-text ``q``) translated to SQL over ``items i``.

Why a hand-written CQL2 walker: ``cql2`` (the Rust library) parses, validates and
normalises CQL2 text and JSON, and we use it for that; its ``to_sql`` however renders
values inline as text, knows nothing about our columns (``datetime`` vs
``properties->'x'``, PostGIS geometry, jsonb types) and does not produce parameterised
SQL. So the normalised CQL2 JSON AST is translated here to psycopg.sql. Every value is
embedded as ``sql.Literal``; property names are checked against a safe pattern and also
passed as literals into the jsonb path, so a hostile request cannot inject SQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cql2
from psycopg import sql

from embcat.catalog.errors import InvalidInput
from embcat.catalog.search_values import (
    FALSE,
    TRUE,
    bbox_literal,
    check_depth,
    check_text_depth,
    geometry_literal,
    parse_timestamp,
    ts_literal,
)

PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]{0,255}$")

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


def jsonb_property(key: str) -> sql.Composable:
    return sql.SQL("(i.properties -> {})").format(sql.Literal(key))


def _jsonb_text(key: str) -> sql.Composable:
    return sql.SQL("(i.properties ->> {})").format(sql.Literal(key))


def _property(name: Any) -> _Operand:
    key = property_name(name)
    if key in COLUMNS:
        col, kind = COLUMNS[key]
        return _Operand(sql.SQL(col), kind, key=key)
    return _Operand(jsonb_property(key), "jsonb", key=key)


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
        return ts_literal(parse_timestamp(o.value), "")
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


def _operand(node: Any) -> _Operand:
    if isinstance(node, dict):
        if "property" in node:
            return _property(node["property"])
        if "timestamp" in node or "date" in node:
            t = parse_timestamp(node.get("timestamp") or node["date"])
            return _Operand(ts_literal(t, ""), "ts", value=t, literal=True)
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


def like_escape(value: str) -> str:
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
        check_text_depth(value)
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
