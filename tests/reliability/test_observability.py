"""Observability: request ids, JSON access logs, Prometheus metrics, /health."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    handler = _Records()
    logger = logging.getLogger("embcat.access")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_sane_request_id_is_echoed(rel_server: str) -> None:
    r = httpx.get(rel_server + "/conformance", headers={"X-Request-ID": "abc-123.x:y"})
    assert r.headers["x-request-id"] == "abc-123.x:y"


@pytest.mark.parametrize("bad", ["has space", "x" * 200, "semi;colon", "<script>"])
def test_insane_request_id_is_replaced(rel_server: str, bad: str) -> None:
    r = httpx.get(rel_server + "/conformance", headers={"X-Request-ID": bad})
    assert r.headers["x-request-id"] != bad
    assert len(r.headers["x-request-id"]) == 32


def test_request_id_is_generated_per_request(rel_server: str) -> None:
    ids = {httpx.get(rel_server + "/conformance").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_error_responses_carry_the_request_id(rel_server: str, rel_collection: str) -> None:
    r = httpx.get(f"{rel_server}/collections/{rel_collection}/items/nope")
    assert r.status_code == 404
    assert len(r.headers["x-request-id"]) == 32


def test_access_log_is_json_with_route_template_and_request_id(
    rel_server: str, rel_collection: str, access_records: list[logging.LogRecord]
) -> None:
    from embcat.api.observability import JsonFormatter

    r = httpx.get(
        f"{rel_server}/collections/{rel_collection}/items/item-002",
        headers={"X-Request-ID": "trace-42"},
    )
    assert r.status_code == 200
    mine = [rec for rec in access_records if getattr(rec, "request_id", None) == "trace-42"]
    assert len(mine) == 1
    line = json.loads(JsonFormatter().format(mine[0]))
    assert line["route"] == "/collections/{collection_id}/items/{item_id}"
    assert line["path"] == f"/collections/{rel_collection}/items/item-002"
    assert line["status"] == 200 and line["method"] == "GET"
    assert line["duration_ms"] > 0 and line["level"] == "info"


def test_access_log_redacts_credentials_in_the_query(
    rel_server: str, access_records: list[logging.LogRecord]
) -> None:
    httpx.get(
        rel_server + "/search",
        params={"limit": 1, "api_key": "k_1.topsecret"},
        headers={"X-Request-ID": "redact-1"},
    )
    mine = [rec for rec in access_records if getattr(rec, "request_id", None) == "redact-1"]
    assert mine and "topsecret" not in mine[0].query  # type: ignore[attr-defined]
    assert "api_key=%2A%2A%2A" in mine[0].query  # type: ignore[attr-defined]


def test_log_records_inside_a_request_carry_its_id() -> None:
    from embcat.api import observability

    observability._install_record_factory()
    handler = _Records()
    logger = logging.getLogger("embcat.catalog.reliability-test")
    logger.addHandler(handler)
    token = observability.request_id_var.set("rid-7")
    try:
        logger.warning("inside")
    finally:
        observability.request_id_var.reset(token)
        logger.removeHandler(handler)
    logger.addHandler(handler)
    try:
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    assert [r.request_id for r in handler.records] == ["rid-7", None]  # type: ignore[attr-defined]


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_count_requests_by_route_template(rel_server: str, rel_collection: str) -> None:
    route = "/collections/{collection_id}/items/{item_id}"
    before = httpx.get(rel_server + "/metrics").text
    n0 = _metric(before, "embcat_http_request_duration_seconds_count", route=route, status="200")
    for k in range(3):
        httpx.get(f"{rel_server}/collections/{rel_collection}/items/item-00{k}")
    text = httpx.get(rel_server + "/metrics").text
    n1 = _metric(text, "embcat_http_request_duration_seconds_count", route=route, status="200")
    assert n1 is not None and n1 - (n0 or 0) == 3


def test_unmatched_paths_share_one_label(rel_server: str) -> None:
    httpx.get(rel_server + "/no/such/path/12345")
    text = httpx.get(rel_server + "/metrics").text
    assert 'route="<unmatched>"' in text
    assert "12345" not in text


def test_metrics_expose_the_pool_and_catalogue_metrics(rel_server: str) -> None:
    httpx.get(rel_server + "/conformance")
    r = httpx.get(rel_server + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    for name in (
        "embcat_db_pool_size",
        "embcat_db_pool_max",
        "embcat_similarity_duration_seconds",
        "embcat_publish_total",
        "embcat_publish_duration_seconds",
    ):
        assert f"# TYPE {name}" in r.text
    assert _metric(r.text, "embcat_db_pool_max") == 4


def test_publish_timer_counts_outcomes() -> None:
    from embcat.catalog import metrics
    from embcat.catalog.errors import InvalidInput

    def count(outcome: str) -> float:
        return metrics.PUBLISH_TOTAL.labels(mode="upsert", outcome=outcome)._value.get()

    ok0, bad0 = count("ok"), count("invalid")
    with metrics.publish_timer("upsert") as info:
        info["rows"] = 5
    with pytest.raises(InvalidInput), metrics.publish_timer("upsert"):
        raise InvalidInput("broken shard")
    assert (count("ok") - ok0, count("invalid") - bad0) == (1, 1)


def test_health_reports_database_extensions_and_revision(rel_server: str) -> None:
    body = httpx.get(rel_server + "/health").json()
    assert body["database"] == "reachable"
    assert body["postgres"] and body["postgis"] and body["pgvector"]
    assert body["revision"] == body["head"] and body["up_to_date"] is True
