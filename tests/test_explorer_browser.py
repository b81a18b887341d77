"""The explorer page in a real headless Chromium against a live server on 127.0.0.1.

If Chromium or chromedriver is missing these tests FAIL with the set-up command to run
(`scripts/setup-explorer.sh --browser`); they never skip.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pyarrow.parquet as pq
import pytest
from browser.harness import (
    click_chip,
    load_chips,
    open_explorer,
    wait_for,
)
from pgvector.psycopg import register_vector
from selenium.webdriver.common.by import By


@pytest.fixture(scope="module")
def chips(database_url: str) -> Iterator[tuple[str, list[str]]]:
    """A committed collection of 96 square chips with smooth vectors; dropped afterwards."""
    cid = f"explorer-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        ids = load_chips(conn, cid)
    try:
        yield cid, ids
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


def test_clicking_a_chip_lists_the_similarity_results_of_the_api(
    chips: tuple[str, list[str]], explorer_server: str, browser: Any, tmp_path: Path
) -> None:
    cid, ids = chips
    open_explorer(browser, explorer_server, cid)
    assert browser.execute_script("return window.explorerChipIds().length") == len(ids)
    clicked = ids[40]
    click_chip(browser, clicked)
    # Wait for this click's search (its body names the clicked chip) to be drawn.
    browser_search = _wait_for_search(browser, clicked)
    rows = browser.find_elements(By.CSS_SELECTOR, "#result-list li")
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    shown = [
        (li.get_attribute("data-id"), float(li.find_element(By.CLASS_NAME, "distance").text))
        for li in rows
    ]
    assert len(shown) == 10
    # The same request sent by the test to the similarity API gives the same ranking.
    body = browser_search["body"]
    assert body["similarity"] == {"item": {"collection": cid, "id": clicked}}
    api = httpx.post(f"{explorer_server}/search", json=body, timeout=10).json()["features"]
    assert [iid for iid, _ in shown] == [f["id"] for f in api]
    distances = [d for _, d in shown]
    assert distances == sorted(distances)
    api_distances = [f["properties"]["similarity:distance"] for f in api]
    assert distances == pytest.approx(api_distances, abs=5.1e-5)  # shown with 4 decimals
    assert (tmp_path / "explorer.png").stat().st_size > 10_000


def test_item_panel_shows_the_clicked_chips_metadata_and_vector_link(
    chips: tuple[str, list[str]], explorer_server: str, browser: Any
) -> None:
    cid, ids = chips
    open_explorer(browser, explorer_server, cid)
    click_chip(browser, ids[7])
    _wait_for_search(browser, ids[7])
    details = browser.find_element(By.ID, "item-details")
    text = details.text
    assert ids[7] in text and "smooth-field" in text and "scenes.example.org" in text
    vector = details.find_element(By.LINK_TEXT, "download (.npy)").get_attribute("href")
    assert vector == f"{explorer_server}/collections/{cid}/items/{ids[7]}/embedding"


def test_few_shot_search_ranks_matches_for_marked_positives_and_negatives(
    chips: tuple[str, list[str]], explorer_server: str, browser: Any
) -> None:
    cid, ids = chips
    open_explorer(browser, explorer_server, cid)
    browser.find_element(By.ID, "fewshot").click()
    click_chip(browser, ids[0])
    click_chip(browser, ids[1])
    click_chip(browser, ids[95], shift=True)
    assert browser.find_element(By.ID, "examples").text == "2 positive, 1 negative"
    browser.find_element(By.ID, "run-fewshot").click()
    search = _wait_for_search(browser, None)
    similarity = search["body"]["similarity"]
    assert similarity["positive"] == [{"collection": cid, "id": i} for i in ids[:2]]
    assert similarity["negative"] == [{"collection": cid, "id": ids[95]}]
    shown = [
        li.get_attribute("data-id")
        for li in browser.find_elements(By.CSS_SELECTOR, "#result-list li")
    ]
    assert len(shown) == 10 and not {ids[0], ids[1], ids[95]} & set(shown)


def _wait_for_search(browser: Any, item_id: str | None) -> dict[str, Any]:
    check = (
        "window.explorerLastSearch && window.explorerLastSearch.body.similarity.item"
        f" && window.explorerLastSearch.body.similarity.item.id === {item_id!r}"
        if item_id is not None
        else "window.explorerLastSearch && window.explorerLastSearch.body.similarity.positive"
    )
    wait_for(browser, check)
    return browser.execute_script("return window.explorerLastSearch")  # type: ignore[no-any-return]


def test_export_link_downloads_exactly_the_listed_results(
    chips: tuple[str, list[str]], explorer_server: str, browser: Any
) -> None:
    cid, ids = chips
    open_explorer(browser, explorer_server, cid)
    click_chip(browser, ids[60])
    _wait_for_search(browser, ids[60])
    shown = [
        li.get_attribute("data-id")
        for li in browser.find_elements(By.CSS_SELECTOR, "#result-list li")
    ]
    href = browser.find_element(By.ID, "export-link").get_attribute("href")
    response = httpx.get(href, timeout=20)
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(response.content), columns=["id", "embedding"])
    assert sorted(table.column("id").to_pylist()) == sorted(shown)


def test_a_collection_larger_than_one_response_is_refetched_for_the_view(
    chips: tuple[str, list[str]], explorer_server: str, browser: Any
) -> None:
    cid, ids = chips
    browser.get(f"{explorer_server}/explorer?collection={cid}&limit=20")
    wait_for(browser, "window.explorerTimings && window.explorerTimings.mapRendered")
    assert ids[90] not in browser.execute_script("return window.explorerChipIds()")
    # Zoom onto chip 90 (north-east, beyond the first 20 by id): the view's chips load.
    browser.execute_script("window.explorerMap.setView([45.075, 10.065], 15, {animate: false})")
    wait_for(browser, f"window.explorerChipIds().includes({ids[90]!r})")


def test_the_page_waits_out_a_busy_servers_429s(
    chips: tuple[str, list[str]], database_url: str, browser: Any
) -> None:
    """One request in flight per client: the page's parallel requests (collection,
    footprints, thumbnails) meet 429 with Retry-After; it asks again and still shows
    every chip and a click's results (it reported the 429 as an error before)."""
    from helpers_server import start_server

    from embcat.api.settings import ApiSettings

    cid, ids = chips
    settings = ApiSettings(database_url=database_url, db_pool_max=4, max_requests_per_client=1)
    handle = start_server(settings)
    try:
        open_explorer(browser, handle.base_url, cid, timeout=60)
        wait_for(browser, f"window.explorerChipIds().length === {len(ids)}", 60)
        click_chip(browser, ids[12])
        _wait_for_search(browser, ids[12])
        rows = browser.find_elements(By.CSS_SELECTOR, "#result-list li")
        assert len(rows) == 10
        assert "error" not in (browser.find_element(By.ID, "status").get_attribute("class") or "")
    finally:
        handle.stop()
