"""Planner row estimates of similarity filters, remembered for a minute per filter."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

ESTIMATE_CACHE_SIZE = 1024


ESTIMATE_CACHE_MAX_TEXT = 4096  # longer filters (large intersects polygons) are not kept


ESTIMATE_CACHE_TTL_S = 60.0


_estimate_cache: OrderedDict[tuple[Any, ...], tuple[float, list[float]]] = OrderedDict()


_estimate_lock = threading.Lock()


def _estimates(
    conn: psycopg.Connection,
    queries: Sequence[sql.Composable],
    stats: tuple[Any, ...] | None = None,
) -> list[float]:
    """The planner's row estimates of ``queries``, planned together in one round trip.

    With ``stats`` (the row of ``store.embedding_reads.STATS_SQL``: the tables' sizes and
    row counts), an estimate is remembered for a minute under the query text and those
    numbers: the planner derives it from the statistics and the tables' current sizes, so
    a repeated filter (the unfiltered query, the next page, a map view searched again)
    skips the EXPLAIN, and an insert or ANALYZE that could change the answer changes the
    key.
    """
    union = sql.SQL(" union all ").join(sql.SQL("({})").format(q) for q in queries)
    key = None
    text = union.as_string(conn) if stats is not None else ""
    if stats is not None and len(text) <= ESTIMATE_CACHE_MAX_TEXT:
        info = conn.info
        key = (info.host, info.port, info.dbname, text, *stats)
        now = time.monotonic()
        with _estimate_lock:
            found = _estimate_cache.get(key)
            if found is not None and now - found[0] < ESTIMATE_CACHE_TTL_S:
                _estimate_cache.move_to_end(key)
                return list(found[1])
    estimates = _explain_rows(conn, union, len(queries))
    if key is not None:
        with _estimate_lock:
            _estimate_cache[key] = (time.monotonic(), estimates)
            _estimate_cache.move_to_end(key)
            while len(_estimate_cache) > ESTIMATE_CACHE_SIZE:
                _estimate_cache.popitem(last=False)
    return estimates


def _explain_rows(conn: psycopg.Connection, union: sql.Composed, count: int) -> list[float]:
    row = conn.execute(sql.SQL("explain (format json) {}").format(union)).fetchone()
    assert row is not None
    plan = row[0]
    if isinstance(plan, str):
        import json

        plan = json.loads(plan)
    top = plan[0]["Plan"]
    if count == 1:
        return [float(top["Plan Rows"])]
    children = top.get("Plans", [])
    if top.get("Node Type") != "Append" or len(children) != count:
        raise AssertionError(f"unexpected plan for the estimates: {top.get('Node Type')}")
    return [float(child["Plan Rows"]) for child in children]
