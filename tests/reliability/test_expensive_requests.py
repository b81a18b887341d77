"""Issue 15, finding 11: many addresses together cannot spend the server's CPU and
connections on expensive requests.

Expensive requests (large bodies, exact similarity, scoring) share a per-process bound
(1 in these tests); past it they get 503 + Retry-After at once while cheap requests go on.
A request is held in flight by a raw socket that sends its headers and part of its body.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from helpers_server import start_server
from relhelpers import api_settings_for

EXPENSIVE_BYTES = 4096
SEARCH_BYTES = 512 * 1024


@pytest.fixture(scope="module")
def bounded(database_url: str, rel_collection: str) -> Iterator[str]:
    handle = start_server(
        api_settings_for(
            database_url,
            max_expensive_requests=1,
            expensive_body_bytes=EXPENSIVE_BYTES,
            max_search_body_bytes=SEARCH_BYTES,
            request_body_timeout_s=1.5,
            max_body_bytes=1024 * 1024,
            max_requests_per_client=0,  # every test client shares 127.0.0.1
        )
    )
    try:
        yield handle.base_url
    finally:
        handle.stop()


def _open(base: str, method: str, path: str, length: int, first: bytes = b"") -> socket.socket:
    """A request whose headers declare ``length`` body bytes, of which ``first`` are sent."""
    parts = urlsplit(base)
    s = socket.create_connection((parts.hostname, parts.port), timeout=10)
    s.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
        + first
    )
    return s


def _answer(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "connection closed before an answer"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(rest) < int(headers.get("content-length", 0)):
        chunk = s.recv(65536)
        assert chunk, "connection closed inside the answer"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def _wait_admitted(base: str, cid: str) -> None:
    """Until an expensive request is refused with 503 (the held one has its slot)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _exact(base, cid).status_code == 503:
            return
        time.sleep(0.05)
    raise AssertionError("the held request never took the slot")


def _exact(base: str, cid: str) -> httpx.Response:
    return httpx.get(f"{base}/collections/{cid}/items/item-000/similar?exact=true", timeout=10)


def test_search_body_over_the_limit_is_413_before_it_is_read(bounded: str) -> None:
    s = _open(bounded, "POST", "/search", SEARCH_BYTES + 1)  # no body byte is sent
    try:
        status, _, body = _answer(s)
    finally:
        s.close()
    assert status == 413
    assert b"PayloadTooLarge" in body


def test_streamed_search_body_over_the_limit_is_413(bounded: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"limit": 1, "ids": ["' + b"x" * SEARCH_BYTES
        yield b'"]}'

    r = httpx.post(bounded + "/search", content=chunks(), timeout=10)
    assert r.status_code == 413, r.text


def test_past_the_expensive_bound_503_with_retry_after_while_cheap_requests_answer(
    bounded: str, rel_collection: str
) -> None:
    held = _open(bounded, "POST", "/search", EXPENSIVE_BYTES + 100, b'{"limit": 1')
    try:
        _wait_admitted(bounded, rel_collection)
        r = _exact(bounded, rel_collection)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["code"] == "ServerBusy"
        big = {"limit": 1, "ids": ["x" * EXPENSIVE_BYTES]}
        assert httpx.post(bounded + "/search", json=big, timeout=10).status_code == 503
        cheap = httpx.get(f"{bounded}/collections/{rel_collection}/items/item-000", timeout=10)
        assert cheap.status_code == 200
        assert httpx.post(bounded + "/search", json={"limit": 1}, timeout=10).status_code == 200
    finally:
        held.close()


def test_slot_is_given_back_when_the_client_goes_away(bounded: str, rel_collection: str) -> None:
    held = _open(bounded, "POST", "/search", EXPENSIVE_BYTES + 100, b'{"limit": 1')
    _wait_admitted(bounded, rel_collection)
    held.close()
    deadline = time.monotonic() + 5
    while _exact(bounded, rel_collection).status_code != 200:
        assert time.monotonic() < deadline, "the slot was never given back"
        time.sleep(0.05)


def test_body_that_does_not_arrive_in_time_is_408_and_frees_the_slot(
    bounded: str, rel_collection: str
) -> None:
    s = _open(bounded, "POST", "/search", EXPENSIVE_BYTES + 100, b'{"limit": 1')
    try:
        status, _, body = _answer(s)  # after request_body_timeout_s (1.5 s)
    finally:
        s.close()
    assert status == 408 and b"RequestTimeout" in body
    assert _exact(bounded, rel_collection).status_code == 200


def test_search_body_past_the_vertex_cap_is_refused_before_the_models_parse_it(
    bounded: str,
) -> None:
    ring = [[0.0001 * k, 0.0] for k in range(10_001)] + [[0.0, 1.0], [0.0, 0.0]]
    body = {"limit": 1, "intersects": {"type": "Polygon", "coordinates": [ring]}}
    assert EXPENSIVE_BYTES < len(json.dumps(body)) < SEARCH_BYTES
    r = httpx.post(bounded + "/search", json=body, timeout=10)
    assert r.status_code == 400
    assert "more than 10000 vertices" in r.json()["description"]


def test_exact_similarity_in_a_search_body_counts_as_expensive(
    bounded: str, rel_collection: str
) -> None:
    held = _open(bounded, "POST", "/search", EXPENSIVE_BYTES + 100, b'{"limit": 1')
    try:
        _wait_admitted(bounded, rel_collection)
        body = {
            "collections": [rel_collection],
            "limit": 1,
            "similarity": {"item": {"collection": rel_collection, "id": "item-000"}, "exact": True},
        }
        assert httpx.post(bounded + "/search", json=body, timeout=10).status_code == 503
    finally:
        held.close()


def test_upload_chunks_take_no_expensive_slot(bounded: str, rel_collection: str) -> None:
    """File bytes for the spool (authenticated, never parsed) are not held to the bound."""
    held = _open(bounded, "POST", "/search", EXPENSIVE_BYTES + 100, b'{"limit": 1')
    try:
        _wait_admitted(bounded, rel_collection)
        r = httpx.put(
            bounded + "/publish/uploads/u1/shards/s.parquet?offset=0",
            content=b"x" * (EXPENSIVE_BYTES * 2),
            timeout=10,
        )
        assert r.status_code == 401  # reached the route's key check, not the bound's 503
    finally:
        held.close()
