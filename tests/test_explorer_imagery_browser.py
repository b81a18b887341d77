"""The explorer's imagery in headless Chromium against a live server (issue 20).

On the planted-block scene (real encode + publish: chip thumbnails and a scene quicklook),
the imagery toggle puts the scene quicklook under the footprints and back, the ranked
results and the few-shot examples show their chips' thumbnails, and distances keep enough
digits to tell neighbours apart. ``EMBCAT_SCREENSHOTS=1`` rewrites
docs/img/explorer-imagery.png.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from browser.harness import click_chip, open_explorer, wait_for
from imagerydata import add_thumbnails, tiny_png
from scoredata import examples, publish_block_scene
from selenium.webdriver.common.by import By
from shardgen import write_run

from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings

WATER, TOWN = 0, 4
IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


@pytest.fixture(scope="module")
def planted(tmp_path_factory, database_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    cid = f"imageryui-{uuid.uuid4().hex[:8]}"
    truth = publish_block_scene(tmp_path_factory.mktemp("blocks"), database_url, cid)
    yield cid, truth
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (cid,))


@pytest.fixture(scope="module")
def thumbs_only(tmp_path_factory, database_url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Chips with thumbnails and no scene quicklook (a run from another tool)."""
    run = write_run(tmp_path_factory.mktemp("thumbs") / "run", 12, dims=8, seed=4,
                    encoder="e" + uuid.uuid4().hex[:8])  # fmt: skip
    made = add_thumbnails(run, lambda k, _i: tiny_png(k))
    cid = f"thumbsui-{uuid.uuid4().hex[:8]}"
    publish(run, collection_id=cid, settings=DatabaseSettings(database_url=database_url),
            progress=False)  # fmt: skip
    yield cid, made
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (cid,))


def test_the_imagery_toggle_shows_the_scene_quicklook_under_the_footprints(
    planted, explorer_server: str, browser: Any
) -> None:
    cid, truth = planted
    open_explorer(browser, explorer_server, cid)
    some = sorted(truth)[0]
    assert browser.execute_script("return window.explorerImagery()") == []
    assert browser.execute_script("return window.explorerChipOpacity(arguments[0])", some) > 0.5
    browser.find_element(By.ID, "view-imagery").click()
    images = wait_for(
        browser,
        "window.explorerImagery().length && window.explorerImagery().every((i) => i.complete)"
        " && window.explorerImagery()",
    )
    assert len(images) == 1 and images[0]["src"].endswith(
        f"/collections/{cid}/quicklooks/blocks.png"
    )
    assert browser.execute_script("return window.explorerChipOpacity(arguments[0])", some) == 0
    assert browser.execute_script("return document.body.dataset.view") == "imagery"
    browser.find_element(By.ID, "view-embedding").click()
    assert browser.execute_script("return window.explorerImagery()") == []
    assert browser.execute_script("return window.explorerChipOpacity(arguments[0])", some) > 0.5


def test_without_quicklooks_the_imagery_layer_shows_the_chip_thumbnails(
    thumbs_only, explorer_server: str, browser: Any
) -> None:
    cid, made = thumbs_only
    open_explorer(browser, explorer_server, cid)
    browser.find_element(By.ID, "view-imagery").click()
    images = wait_for(
        browser,
        f"window.explorerImagery().length === {len(made)}"
        " && window.explorerImagery().every((i) => i.complete) && window.explorerImagery()",
    )
    assert {i["src"].rsplit("/items/", 1)[1] for i in images} == {
        f"{iid}/thumbnail.png" for iid in made
    }
    assert "chip thumbnails" in browser.find_element(By.ID, "imagery-note").text


def test_ranked_results_and_examples_show_their_thumbnails(
    planted, explorer_server: str, browser: Any
) -> None:
    cid, truth = planted
    open_explorer(browser, explorer_server, cid)
    browser.find_element(By.ID, "view-imagery").click()
    wait_for(browser, "window.explorerImagery().every((i) => i.complete)")
    pos, neg = examples(truth, TOWN, WATER)
    click_chip(browser, pos[0])
    wait_for(browser, "window.explorerLastSearch !== null")
    count = browser.execute_script("return window.explorerLastSearch.count")
    loaded = wait_for(
        browser,
        f"(() => {{ const l = [...document.querySelectorAll('#result-list img.thumb')];"
        f" return l.length === {count} && l.every((i) => i.complete && i.naturalWidth > 0)"
        f" && l.length; }})()",
    )
    assert loaded == count == 10
    item_thumb = wait_for(browser, "document.getElementById('item-thumb')"
                          " && document.getElementById('item-thumb').src")  # fmt: skip
    assert item_thumb.endswith(f"/collections/{cid}/items/{pos[0]}/thumbnail.png")
    if os.environ.get("EMBCAT_SCREENSHOTS") == "1":
        IMG.mkdir(parents=True, exist_ok=True)
        browser.execute_script("document.getElementById('results').scrollIntoView()")
        browser.save_screenshot(str(IMG / "explorer-imagery.png"))

    browser.find_element(By.ID, "fewshot").click()
    click_chip(browser, pos[1])
    click_chip(browser, neg[0], shift=True)
    wait_for(browser, "document.querySelectorAll('#example-thumbs img').length === 2")
    kinds = browser.execute_script(
        "return [...document.querySelectorAll('#example-thumbs img')].map((i) => i.className)"
    )
    assert kinds == ["thumb positive", "thumb negative"]
    wait_for(
        browser,
        "[...document.querySelectorAll('#example-thumbs img')]"
        ".every((i) => i.complete && i.naturalWidth > 0)",
    )


def test_distances_keep_enough_digits_to_tell_neighbours_apart(explorer_server: str, browser: Any):
    browser.get(f"{explorer_server}/explorer")
    wait_for(browser, "typeof window.explorerDistanceTexts === 'function'")
    texts = browser.execute_script(
        "return window.explorerDistanceTexts([0.00012345, 0.1234561, 0.1234569, 0.1234569])"
    )
    assert texts[0] == "0.0001234" or texts[0].startswith("0.00012345")
    assert texts[1] != texts[2] and texts[2] == texts[3]
