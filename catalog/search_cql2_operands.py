"""The operands of the CQL2 translator (``catalog.search_cql2``) and their comparisons.

A CQL2 value or property becomes an ``Operand``: its SQL over ``items i`` and its kind
(``COLUMNS`` for the item columns, ``jsonb`` for any other property, literals with their
Python value). ``compare`` renders ``=``, ``<`` and the others between two operands, with
the casts each pair of kinds needs (a property compared with a number is guarded by its
jsonb type; ``"50"`` against a numeric property compares as a number).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from embcat.catalog.errors import InvalidInput
from embcat.catalog.search_values import parse_timestamp, ts_literal

PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]{0,255}$")


@dataclass
class Operand:
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


def jsonb_text(key: str) -> sql.Composable:
    return sql.SQL("(i.properties ->> {})").format(sql.Literal(key))


def property_operand(name: Any) -> Operand:
    key = property_name(name)
    if key in COLUMNS:
        col, kind = COLUMNS[key]
        return Operand(sql.SQL(col), kind, key=key)
    return Operand(jsonb_property(key), "jsonb", key=key)


def literal_operand(value: Any) -> Operand:
    if value is None:
        return Operand(sql.SQL("NULL"), "null", literal=True)
    if isinstance(value, bool):
        return Operand(sql.Literal(value), "bool", value=value, literal=True)
    if isinstance(value, int | float):
        return Operand(
            sql.SQL("{}::numeric").format(sql.Literal(value)), "num", value=value, literal=True
        )
    if isinstance(value, str):
        return Operand(
            sql.SQL("{}::text").format(sql.Literal(value)), "text", value=value, literal=True
        )
    if isinstance(value, list):
        return Operand(sql.SQL("NULL"), "array", value=value, literal=True)
    raise InvalidInput(f"unsupported value {value!r}")


def as_text(o: Operand) -> sql.Composable:
    if o.kind == "text":
        return o.expr
    if o.kind == "jsonb" and o.key is not None:
        return jsonb_text(o.key)
    raise InvalidInput(f"expected a string operand, got a {o.kind}")


def as_ts(o: Operand) -> sql.Composable:
    if o.kind == "ts":
        return o.expr
    if o.kind == "text" and o.literal:
        return ts_literal(parse_timestamp(o.value), "")
    if o.kind == "jsonb" and o.key is not None:
        return sql.SQL("({})::timestamptz").format(jsonb_text(o.key))
    raise InvalidInput(f"expected a timestamp operand, got a {o.kind}")


def _as_jsonb_value(o: Operand) -> sql.Composable:
    return sql.SQL("{}::jsonb").format(sql.Literal(json.dumps(o.value)))


COMPARISONS = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def compare(op: str, a: Operand, b: Operand) -> sql.Composable:
    sym = sql.SQL(COMPARISONS[op])
    if a.kind == "null" or b.kind == "null":
        raise InvalidInput("comparison with NULL: use IS NULL")
    if a.kind == "jsonb" and b.kind != "jsonb" and a.literal is False and b.literal:
        return _compare_jsonb(sym, a, b)
    if b.kind == "jsonb" and a.kind != "jsonb" and a.literal:
        return _compare_jsonb(_flip(op), b, a)
    kinds = {a.kind, b.kind}
    if kinds <= {"ts", "text"} and "ts" in kinds:
        return sql.SQL("({} {} {})").format(as_ts(a), sym, as_ts(b))
    if "jsonb" in kinds and kinds <= {"jsonb", "text"}:
        return sql.SQL("({} {} {})").format(as_text(a), sym, as_text(b))
    if "jsonb" in kinds and kinds <= {"jsonb", "ts"}:
        return sql.SQL("({} {} {})").format(as_ts(a), sym, as_ts(b))
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


def _compare_jsonb(sym: sql.SQL, prop: Operand, lit: Operand) -> sql.Composable:
    assert prop.key is not None
    if lit.kind == "text":
        as_text = sql.SQL("({} {} {})").format(jsonb_text(prop.key), sym, lit.expr)
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
        return sql.SQL("({} {} {})").format(as_ts(prop), sym, lit.expr)
    raise InvalidInput(f"cannot compare property {prop.key!r} with a {lit.kind}")
