"""The Query extension (``{"prop": {"op": value}}``, turned into CQL2 JSON) and free-text
``q`` (terms matched in title, description and keywords), over ``items i``."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from embcat.catalog.errors import InvalidInput
from embcat.catalog.search_cql2 import like_escape
from embcat.catalog.search_values import TRUE

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
                v = like_escape(value)
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
            sql.SQL("{} ILIKE {}").format(haystack, sql.Literal(f"%{like_escape(t)}%"))
            for t in terms
        )
    )
