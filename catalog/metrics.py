"""Prometheus metrics of the catalogue's jobs and queries (prometheus-client only, no FastAPI).

The metric objects live in the process-wide default registry, defined once at import, so
that catalog code (publish, similarity) and the API's ``/metrics`` endpoint
(``api.observability``) share them. Recording is cheap and never raises::

    from embcat.catalog import metrics

    with metrics.publish_timer(mode):          # counts the outcome, times the run
        ...
    metrics.observe_similarity(seconds, strategy="hnsw")

Names follow the Prometheus conventions (base units, ``_total`` for counters).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

# Request latencies of a catalogue API: 1 ms .. 30 s (the default statement timeout).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Publish runs: a second .. two hours.
PUBLISH_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)

HTTP_REQUEST_DURATION = Histogram(
    "embcat_http_request_duration_seconds",
    "HTTP request latency by method, route template and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
SIMILARITY_DURATION = Histogram(
    "embcat_similarity_duration_seconds",
    "Latency of similarity queries (database part), by query strategy.",
    ["strategy"],
    buckets=LATENCY_BUCKETS,
)
PUBLISH_TOTAL = Counter(
    "embcat_publish_total",
    "Publish runs by mode and outcome (ok, invalid, conflict, error).",
    ["mode", "outcome"],
)
PUBLISH_DURATION = Histogram(
    "embcat_publish_duration_seconds",
    "Duration of publish runs by mode and outcome.",
    ["mode", "outcome"],
    buckets=PUBLISH_BUCKETS,
)
PUBLISH_ROWS = Counter(
    "embcat_publish_rows_total",
    "Rows read by successful publish runs, by mode.",
    ["mode"],
)


def observe_similarity(seconds: float, strategy: str = "unknown") -> None:
    """Record one similarity query's duration (``strategy``: exact, hnsw, ...)."""
    SIMILARITY_DURATION.labels(strategy=strategy).observe(max(seconds, 0.0))


def observe_publish(mode: str, outcome: str, seconds: float, rows: int = 0) -> None:
    """Record one finished publish run."""
    PUBLISH_TOTAL.labels(mode=mode, outcome=outcome).inc()
    PUBLISH_DURATION.labels(mode=mode, outcome=outcome).observe(max(seconds, 0.0))
    if outcome == "ok" and rows:
        PUBLISH_ROWS.labels(mode=mode).inc(rows)


def outcome_of(exc: BaseException | None) -> str:
    """The outcome label of a run that ended with ``exc`` (None: success)."""
    if exc is None:
        return "ok"
    from embcat.catalog.errors import Conflict, InvalidInput

    if isinstance(exc, InvalidInput):
        return "invalid"
    if isinstance(exc, Conflict):
        return "conflict"
    return "error"


@contextmanager
def publish_timer(mode: str) -> Iterator[dict[str, int]]:
    """Time a publish run and count its outcome; set ``["rows"]`` on the yielded dict."""
    info: dict[str, int] = {"rows": 0}
    t0 = time.perf_counter()
    try:
        yield info
    except BaseException as exc:
        observe_publish(mode, outcome_of(exc), time.perf_counter() - t0)
        raise
    observe_publish(mode, "ok", time.perf_counter() - t0, info["rows"])
