"""Sorting and keyset paging of item search.

Paging is keyset paging on the sort key plus ``(collection_id, id)``: the token carries
the key of the last (next) or first (prev) row of the page, so pages stay stable while
items are inserted. Tokens are opaque (base64url JSON) and bound to the sort order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from embcat.catalog.errors import InvalidInput
from embcat.catalog.search_cql2_operands import jsonb_property, property_name
from embcat.catalog.search_values import FALSE, parse_timestamp, ts_literal

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
            keys.append(SortKey(jsonb_property(name), "jsonb", direction == "desc", name))
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
        return ts_literal(parse_timestamp(value), "")
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


def key_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "ts":
        return value.isoformat()
    return value
