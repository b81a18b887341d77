"""CQL2 (and the Query extension, free-text ``q``) translated to SQL over ``items i``.

Why a hand-written CQL2 walker: ``cql2`` (the Rust library) parses, validates and
normalises CQL2 text and JSON, and we use it for that; its ``to_sql`` however renders
values inline as text, knows nothing about our columns (``datetime`` vs
``properties->'x'``, PostGIS geometry, jsonb types) and does not produce parameterised
SQL. So the normalised CQL2 JSON AST is translated here to psycopg.sql. Every value is
embedded as ``sql.Literal``; property names are checked against a safe pattern and also
passed as literals into the jsonb path, so a hostile request cannot inject SQL.

The operands and comparisons are ``catalog.search_cql2_operands``; the spatial and temporal
functions ``catalog.search_cql2_functions``. This module dispatches the operators
(``cql2_to_sql``) and parses a filter (``normalise_filter``).
"""

from __future__ import annotations

import json
from typing import Any

import cql2
from psycopg import sql

from embcat.catalog.errors import InvalidInput
from embcat.catalog.search_cql2_functions import (
    SPATIAL,
    TEMPORAL,
    geometry_expr,
    temporal_bounds,
)
from embcat.catalog.search_cql2_operands import (
    COMPARISONS,
    Operand,
    as_text,
    compare,
    literal_operand,
    property_operand,
)
from embcat.catalog.search_values import (
    FALSE,
    TRUE,
    check_depth,
    check_text_depth,
    parse_timestamp,
    ts_literal,
)


def _operand(node: Any) -> Operand:
    if isinstance(node, dict):
        if "property" in node:
            return property_operand(node["property"])
        if "timestamp" in node or "date" in node:
            t = parse_timestamp(node.get("timestamp") or node["date"])
            return Operand(ts_literal(t, ""), "ts", value=t, literal=True)
        if "op" in node and str(node["op"]).lower() == "casei":
            args = node.get("args") or []
            if len(args) != 1:
                raise InvalidInput("casei takes one argument")
            inner = _operand(args[0])
            return Operand(
                sql.SQL("lower({})").format(as_text(inner)),
                "text",
                value=inner.value.lower() if inner.literal else None,
                literal=inner.literal,
            )
        if "type" in node or "bbox" in node:
            return Operand(geometry_expr(node), "geom", literal=True)
        if "interval" in node:
            s, e = temporal_bounds(node)
            return Operand(s, "interval", end=e, literal=True)
        raise InvalidInput(f"unsupported expression {node!r}")
    return literal_operand(node)


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
        return compare(op, a, b)
    if op == "isnull":
        o = _operand(_args(node, 1)[0])
        if o.kind == "jsonb":
            return sql.SQL("({j} IS NULL OR jsonb_typeof({j}) = 'null')").format(j=o.expr)
        return sql.SQL("({} IS NULL)").format(o.expr)
    if op in ("like", "ilike"):
        a, b = (_operand(x) for x in _args(node, 2))
        return sql.SQL("({} {} {})").format(
            as_text(a), sql.SQL("LIKE" if op == "like" else "ILIKE"), as_text(b)
        )
    if op == "between":
        args = _args(node, 3)
        a, lo, hi = (_operand(x) for x in args)
        return sql.SQL("({} AND {})").format(compare(">=", a, lo), compare("<=", a, hi))
    if op == "in":
        left, values = _args(node, 2)
        if not isinstance(values, list) or not values:
            raise InvalidInput("in needs a non-empty list of values")
        a = _operand(left)
        equal = sql.SQL(" OR ").join(compare("=", a, _operand(v)) for v in values)
        if a.kind != "jsonb":
            return sql.SQL("({})").format(equal)
        # An array-valued property matches when it holds any of the values.
        singles = sql.Literal([json.dumps([v]) for v in values])
        return sql.SQL(
            "({eq} OR (jsonb_typeof({j}) = 'array' AND {j} @> ANY({s}::jsonb[])))"
        ).format(eq=equal, j=a.expr, s=singles)
    if op in SPATIAL:
        g1, g2 = (geometry_expr(x) for x in _args(node, 2))
        return sql.SQL("{}({}, {})").format(sql.SQL(SPATIAL[op]), g1, g2)
    if op in TEMPORAL:
        (s1, e1), (s2, e2) = (temporal_bounds(x) for x in _args(node, 2))
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
