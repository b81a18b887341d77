"""STAC item search over the ``items`` table: the query, its page, its counts (their
statements in ``catalog.store.item_reads``).

``where_clause(SearchQuery)`` composes every filter of a search (collections, ids, bbox,
intersects, datetime, CQL2 ``filter``, ``query``, free-text ``q``) into one
``psycopg.sql.Composable`` over ``items i`` (through ``catalog.filters.Filter``).
The jobs live in their own modules, re-exported here under their old names:

- ``catalog.search_values``: timestamps, intervals, bbox / geometry literals, depth caps;
- ``catalog.search_cql2``: the CQL2 translator (its operands and comparisons in
  ``search_cql2_operands``, its spatial and temporal functions in ``search_cql2_functions``),
  the Query extension, free text;
- ``catalog.search_paging``: sort keys, keyset tokens;
- ``catalog.search_fields``: the Fields extension and the queryables;
- ``catalog.search_request``: request parameters to a ``SearchQuery`` (one parser).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from embcat.catalog.errors import InvalidInput, translated
from embcat.catalog.filters import Filter, datetime_clause
from embcat.catalog.search_cql2 import cql2_to_sql, normalise_filter
from embcat.catalog.search_cql2_operands import COLUMNS, PROPERTY_NAME, property_name
from embcat.catalog.search_fields import apply_fields, queryables
from embcat.catalog.search_paging import (
    SortKey,
    decode_token,
    encode_token,
    key_value,
    keyset_clause,
    order_by,
    sort_keys,
)
from embcat.catalog.search_text import free_text_clause, query_to_cql2
from embcat.catalog.search_values import (
    BBOX_MESSAGE,
    FALSE,
    MAX_JSON_DEPTH,
    MAX_TEXT_DEPTH,
    TRUE,
    bbox_literal,
    check_depth,
    geometry_literal,
    json_depth,
    parse_interval,
    parse_timestamp,
    spatial_filter,
)
from embcat.catalog.stac import item_to_stac
from embcat.catalog.store import item_reads


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


def where_clause(q: SearchQuery) -> sql.Composable:
    """Every filter of ``q`` as one boolean SQL expression over ``items i``
    (``catalog.filters.Filter``: built and rendered for the items table)."""
    return Filter.from_search(q).for_items()


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
    with translated():
        rows = item_reads.page(conn, where, key_cols, order_by(keys, reverse), q.limit + 1)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    if reverse:
        rows.reverse()

    def token_of(row: dict[str, Any], d: str) -> str:
        vals = [key_value(k.kind, row[f"_k{n}"]) for n, k in enumerate(keys)]
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


# --------------------------------------------------------------------------- numberMatched

EXACT_COUNT_LIMIT = 10_000


def estimate_matched(conn: psycopg.Connection, q: SearchQuery) -> int:
    """The planner's estimate of the items matching ``q`` (no rows are read)."""
    with translated():
        found = item_reads.estimate(conn, where_clause(q))
    return 0 if found is None else found


def count_matched(
    conn: psycopg.Connection, q: SearchQuery, *, limit: int = EXACT_COUNT_LIMIT
) -> tuple[int, bool]:
    """``(count, estimated)`` of the items matching ``q`` (paging token ignored): counted
    exactly while at most ``limit`` rows match (the count stops there), otherwise the
    planner's row estimate, flagged ``estimated`` (like pgstac's context)."""
    where = where_clause(q)
    with translated():
        n = item_reads.count_at_most(conn, where, limit + 1)
        if n <= limit:
            return n, False
        found = item_reads.estimate(conn, where)
    estimate = n if found is None else found
    return max(estimate, n), True


__all__ = [
    "BBOX_MESSAGE",
    "COLUMNS",
    "EXACT_COUNT_LIMIT",
    "FALSE",
    "MAX_JSON_DEPTH",
    "MAX_TEXT_DEPTH",
    "PROPERTY_NAME",
    "TRUE",
    "SearchPage",
    "SearchQuery",
    "SortKey",
    "apply_fields",
    "bbox_literal",
    "check_depth",
    "count_matched",
    "cql2_to_sql",
    "datetime_clause",
    "decode_token",
    "encode_token",
    "estimate_matched",
    "free_text_clause",
    "geometry_literal",
    "json_depth",
    "keyset_clause",
    "normalise_filter",
    "order_by",
    "parse_interval",
    "parse_timestamp",
    "property_name",
    "query_to_cql2",
    "queryables",
    "search_items",
    "sort_keys",
    "spatial_filter",
    "where_clause",
]
