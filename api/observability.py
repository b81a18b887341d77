"""Observability of the API: request ids, structured access logs, Prometheus metrics.

``install(app, settings)`` (one call in ``api.app.create_app``) adds:

- a request-id middleware: a sane incoming ``X-Request-ID`` (1-128 characters of
  ``[A-Za-z0-9._:-]``) is kept, anything else is replaced by a generated id; the id is
  echoed in the response header and set in a context variable, and every log record of
  the process carries it as ``record.request_id`` (a log-record factory, so records of
  any logger get it, also those emitted from the thread pool);
- JSON access logs on the ``embcat.access`` logger: method, route template, path, status,
  duration in ms, request id, client. Never headers (``Authorization`` / ``X-API-Key``
  are not read) and query parameters that look like credentials are redacted;
- ``embcat_http_request_duration_seconds{method,route,status}`` (route = the template,
  e.g. ``/collections/{collection_id}/items``, so the label set stays bounded);
- ``GET /metrics``: the process's metrics (``catalog.metrics``: HTTP, similarity and
  publish) plus the database pool's gauges. Under ``PROMETHEUS_MULTIPROC_DIR`` (several
  uvicorn workers) the workers' files are aggregated.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request, params
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embcat.api.settings import ObservabilitySettings
from embcat.catalog import metrics

REQUEST_ID_HEADER = "x-request-id"
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
SECRET_PARAMS = re.compile(r"(?i)^(api[_-]?key|key|secret|password|passwd|access[_-]?token)$")
UNMATCHED = "<unmatched>"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "embcat_request_id", default=None
)
access_log = logging.getLogger("embcat.access")


# ------------------------------------------------------------------ request ids in log records


def current_request_id() -> str | None:
    return request_id_var.get()


def _install_record_factory() -> None:
    """Every LogRecord gets ``request_id`` (None outside a request); installed once."""
    old = logging.getLogRecordFactory()
    if getattr(old, "_embcat_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return record

    factory._embcat_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and extras."""

    FIELDS = ("method", "route", "path", "query", "status", "duration_ms", "client")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


JsonFormatter.converter = time.gmtime


def _configure_access_logger() -> None:
    if any(getattr(h, "_embcat", False) for h in access_log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._embcat = True  # type: ignore[attr-defined]
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def redact_query(query: str) -> str:
    """The query string with credential-like parameters replaced by ``***``."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "***" if SECRET_PARAMS.match(k) else v) for k, v in pairs])


# ------------------------------------------------------------------ middleware


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestObservability:
    """Pure ASGI middleware: request id, access log line and latency histogram."""

    def __init__(self, app: ASGIApp, access: bool = True, record_metrics: bool = True) -> None:
        self.app = app
        self.access = access
        self.record_metrics = record_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if incoming and SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        status = 500
        t0 = time.perf_counter()

        recorded = False

        def record() -> None:
            # Before the last body chunk goes out (a client that has the whole response
            # finds its access-log record and metrics), else when the app returns.
            nonlocal recorded
            if recorded:
                return
            recorded = True
            elapsed = time.perf_counter() - t0
            route = route_template(scope)
            method = scope.get("method", "")
            if self.record_metrics:
                metrics.HTTP_REQUEST_DURATION.labels(
                    method=method, route=route, status=str(status)
                ).observe(elapsed)
            if self.access and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                query = redact_query(scope.get("query_string", b"").decode("latin-1"))
                access_log.info(
                    "%s %s %d",
                    method,
                    route,
                    status,
                    extra={
                        "method": method,
                        "route": route,
                        "path": scope.get("path"),
                        "query": query or None,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": client[0] if client else None,
                    },
                )

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            record()
            request_id_var.reset(token)


# ------------------------------------------------------------------ /metrics


class PoolCollector(Collector):
    """Gauges of one app's psycopg pool (size, idle, waiting requests, errors)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterable[GaugeMetricFamily]:
        pool = getattr(self.app.state, "pool", None)
        if pool is None or not hasattr(pool, "get_stats"):
            return []
        stats = pool.get_stats()
        out = []
        for key, name, doc in (
            ("pool_size", "embcat_db_pool_size", "Connections open or being opened."),
            ("pool_available", "embcat_db_pool_available", "Idle connections in the pool."),
            ("requests_waiting", "embcat_db_pool_waiting", "Requests waiting for a connection."),
            ("pool_max", "embcat_db_pool_max", "Upper bound of the pool."),
            ("connections_errors", "embcat_db_pool_connection_errors", "Failed connects."),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(stats.get(key, 0)))
            out.append(gauge)
        return out


def _metrics_endpoint(app: FastAPI) -> Any:
    pool_registry = CollectorRegistry(auto_describe=False)
    pool_registry.register(PoolCollector(app))

    def metrics_view(request: Request) -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            body = generate_latest(registry)
        else:
            body = generate_latest(REGISTRY)
        body += generate_latest(pool_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics_view


def install(
    app: FastAPI, settings: ObservabilitySettings, dependencies: Sequence[params.Depends] = ()
) -> None:
    """Add the request-id/access-log/metrics middleware and ``GET /metrics`` (with the
    scope check ``dependencies``) to ``app``."""
    _install_record_factory()
    if settings.access_log:
        _configure_access_logger()
    app.add_middleware(
        RequestObservability, access=settings.access_log, record_metrics=settings.metrics
    )
    if settings.metrics:
        app.add_api_route(
            "/metrics",
            _metrics_endpoint(app),
            methods=["GET"],
            name="metrics",
            include_in_schema=False,
            dependencies=list(dependencies),
        )
