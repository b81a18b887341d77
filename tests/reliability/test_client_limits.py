"""Issue 15, findings 20 and 11: forwarded headers are trusted only from the configured
proxies, and one client cannot hold more than its share of requests at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from helpers_server import start_server
from relhelpers import api_settings_for

EVIL = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}


def _hrefs(doc: dict) -> list[str]:
    return [link["href"] for link in doc["links"]]


def test_forwarded_host_of_an_untrusted_client_is_ignored(rel_server: str) -> None:
    r = httpx.get(rel_server + "/", headers=EVIL)
    assert r.status_code == 200
    assert not [h for h in _hrefs(r.json()) if "evil.example" in h]


def test_forwarded_header_of_an_untrusted_client_is_ignored(rel_server: str) -> None:
    r = httpx.get(rel_server + "/", headers={"Forwarded": "host=evil.example;proto=https"})
    assert not [h for h in _hrefs(r.json()) if "evil.example" in h]


@pytest.fixture(scope="module")
def behind_proxy(database_url: str, rel_collection: str) -> Iterator[str]:
    """The API configured to trust 127.0.0.1 (the tests' own address) as its proxy."""
    handle = start_server(api_settings_for(database_url, trusted_proxies="127.0.0.1/32"))
    try:
        yield handle.base_url
    finally:
        handle.stop()


def test_forwarded_host_of_a_trusted_proxy_sets_the_links(behind_proxy: str) -> None:
    r = httpx.get(behind_proxy + "/", headers=EVIL)
    assert "https://evil.example/" in _hrefs(r.json())


def test_a_bad_trusted_proxies_setting_names_the_entry() -> None:
    from pydantic import ValidationError

    from embcat.api.settings import ApiSettings

    with pytest.raises(ValidationError, match="not-an-ip"):
        ApiSettings(trusted_proxies="10.0.0.1, not-an-ip")


@pytest.fixture(scope="module")
def two_per_client(database_url: str, rel_collection: str) -> Iterator[str]:
    handle = start_server(api_settings_for(database_url, max_requests_per_client=2))
    try:
        yield handle.base_url
    finally:
        handle.stop()


def _slow_search(base: str, results: list[int]) -> None:
    """A POST /search whose body takes ~1.5 s to arrive (the request is in flight)."""

    def body() -> Iterator[bytes]:
        yield b'{"limit": '
        time.sleep(1.5)
        yield b"1}"

    r = httpx.post(
        base + "/search", content=body(), headers={"Content-Type": "application/json"},
        timeout=30,
    )  # fmt: skip
    results.append(r.status_code)


def test_a_client_past_its_concurrent_requests_gets_429(two_per_client: str) -> None:
    results: list[int] = []
    threads = [threading.Thread(target=_slow_search, args=(two_per_client, results)) for _ in "ab"]
    for t in threads:
        t.start()
    time.sleep(0.6)
    r = httpx.get(two_per_client + "/collections")
    for t in threads:
        t.join()
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["code"] == "TooManyRequests"
    assert sorted(results) == [200, 200]


def test_the_client_is_served_again_when_its_requests_end(two_per_client: str) -> None:
    results: list[int] = []
    _slow_search(two_per_client, results)
    _slow_search(two_per_client, results)
    assert httpx.get(two_per_client + "/collections").status_code == 200
    assert results == [200, 200]


@pytest.mark.parametrize("path", ["/health", "/explorer/static/explorer.js"])
def test_health_and_the_explorers_files_are_not_counted(two_per_client: str, path: str) -> None:
    results: list[int] = []
    threads = [threading.Thread(target=_slow_search, args=(two_per_client, results)) for _ in "ab"]
    for t in threads:
        t.start()
    time.sleep(0.6)
    r = httpx.get(two_per_client + path)
    for t in threads:
        t.join()
    assert r.status_code == 200, r.text
