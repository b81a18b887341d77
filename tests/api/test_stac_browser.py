"""STAC Browser, unchanged, against the API (issue 19 part 4).

STAC Browser 4.0.1 (npm @radiantearth/stac-browser) is built once by
scripts/setup-stac-browser.sh into build/stac-browser/dist (not committed); this test
serves that build on loopback with a config.js naming the live API as its catalogue and
opens the catalogue, a collection, an item with its vector asset and the search page in
headless Chromium. Each page must render its content with no error in the console;
a screenshot of each is written to docs/img/ when EMBCAT_SCREENSHOTS=1.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from metadata_fixtures import Published, encode_and_publish

from embcat.catalog.settings import DatabaseSettings

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "build" / "stac-browser" / "dist"
SHOTS = ROOT / "docs" / "img"


# STAC Browser's item search lists every item of the catalogue: this module's API and data
# are on a database of its own (tests/api/conftest.py), whatever ran before it.
@pytest.fixture(scope="module")
def live_server(own_server: str) -> str:
    return own_server


@pytest.fixture(scope="module")
def db_settings(own_database: str) -> DatabaseSettings:
    return DatabaseSettings(database_url=own_database)


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory, db_settings: DatabaseSettings
) -> Iterator[Published]:
    cid = f"browse-{uuid.uuid4().hex[:8]}"
    out = encode_and_publish(tmp_path_factory.mktemp("browser"), db_settings, cid)
    yield out
    with psycopg.connect(db_settings.database_url) as conn:
        conn.execute("DELETE FROM collections WHERE id = %s", (cid,))


@pytest.fixture(scope="module")
def browser_site(live_server: str) -> Iterator[str]:
    """The STAC Browser build on a loopback static server, its catalogue the live API."""
    if not (DIST / "index.html").is_file():
        pytest.fail(
            f"STAC Browser is not built ({DIST} missing): run scripts/setup-stac-browser.sh"
        )
    config = (
        "window.STAC_BROWSER_CONFIG = "
        + json.dumps({"catalogUrl": live_server + "/", "historyMode": "hash"})
        + ";"
    ).encode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/favicon.ico":  # the build has none
                self.send_response(204)
                self.end_headers()
                return
            if self.path.split("?")[0] == "/config.js":
                self.send_response(200)
                self.send_header("Content-Type", "application/javascript")
                self.send_header("Content-Length", str(len(config)))
                self.end_headers()
                self.wfile.write(config)
                return
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(DIST))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from browser.harness import start_chromium

    d = start_chromium(1280, 900)
    try:
        yield d
    finally:
        d.quit()


def _open(driver: Any, url: str, expect: str, shot: str, timeout: float = 60.0) -> None:
    """Load ``url``; wait until the page shows ``expect``; fail on console errors."""
    driver.get_log("browser")  # drop earlier pages' messages
    driver.get(url)
    deadline = time.monotonic() + timeout
    while expect not in (driver.execute_script("return document.body.innerText") or ""):
        if time.monotonic() > deadline:
            text = (driver.execute_script("return document.body.innerText") or "")[:500]
            raise AssertionError(f"{url}: {expect!r} not rendered in {timeout} s; page: {text}")
        time.sleep(0.2)
    time.sleep(1.0)  # let the page's remaining requests finish (errors show up then)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if os.environ.get("EMBCAT_SCREENSHOTS") == "1":
        driver.save_screenshot(str(SHOTS / shot))
    assert errors == [], "\n".join(errors)


def test_catalogue_renders(
    driver: Any, browser_site: str, live_server: str, published: Published
) -> None:
    title = httpx.get(f"{live_server}/collections/{published.collection_id}").json()["title"]
    _open(driver, browser_site + "/#/", title, "stac-browser-catalogue.png")


def test_collection_renders(
    driver: Any, browser_site: str, live_server: str, published: Published
) -> None:
    title = httpx.get(f"{live_server}/collections/{published.collection_id}").json()["title"]
    _open(
        driver,
        f"{browser_site}/#/collections/{published.collection_id}",
        title,
        "stac-browser-collection.png",
    )


def test_item_with_its_vector_asset_renders(
    driver: Any, browser_site: str, live_server: str, published: Published
) -> None:
    page = httpx.get(f"{live_server}/collections/{published.collection_id}/items?limit=1").json()
    iid = page["features"][0]["id"]
    _open(
        driver,
        f"{browser_site}/#/collections/{published.collection_id}/items/{iid}",
        "embedding",
        "stac-browser-item.png",
    )


def test_item_search_renders_results(
    driver: Any, browser_site: str, live_server: str, published: Published
) -> None:
    from selenium.webdriver.common.by import By

    page = httpx.get(f"{live_server}/collections/{published.collection_id}/items?limit=1").json()
    _open(driver, f"{browser_site}/#/search", "Search for Items", "stac-browser-search.png")
    driver.find_element(By.PARTIAL_LINK_TEXT, "Search for Items").click()
    time.sleep(0.5)
    buttons = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text == "Submit"]
    next(b for b in buttons if b.is_displayed()).click()
    deadline = time.monotonic() + 60
    # STAC Browser shows ids percent-encoded ("scene%20a_0_0_32")
    wanted = quote(page["features"][0]["id"].rsplit("_", 3)[0], safe="")
    while wanted + "_" not in (driver.execute_script("return document.body.innerText") or ""):
        if time.monotonic() > deadline:
            text = (driver.execute_script("return document.body.innerText") or "")[:800]
            driver.save_screenshot("/tmp/e_search_fail.png")
            raise AssertionError(f"search results without {wanted!r}; page: {text}")
        time.sleep(0.2)
    time.sleep(1.0)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if os.environ.get("EMBCAT_SCREENSHOTS") == "1":
        driver.save_screenshot(str(SHOTS / "stac-browser-search.png"))
    assert errors == [], "\n".join(errors)
