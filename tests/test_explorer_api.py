"""The explorer's HTTP surface on a live server: page, vendored files, features, preview.png."""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from browser.harness import load_chips
from helpers_server import start_server
from pgvector.psycopg import register_vector
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

import embcat.api.explorer as explorer
from embcat.api.settings import ApiSettings
from embcat.catalog.preview import false_colour
from embcat.catalog.search_values import BBOX_MESSAGE


@pytest.fixture(scope="module")
def chips(database_url: str) -> Iterator[tuple[str, list[str]]]:
    cid = f"explorer-api-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        ids = load_chips(conn, cid, cols=10, rows=6)
    try:
        yield cid, ids
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[str]:
    handle = start_server(ApiSettings(database_url=database_url, db_pool_max=4))
    try:
        yield handle.base_url
    finally:
        handle.stop()


def test_page_and_its_code_name_no_other_host(server: str) -> None:
    page = httpx.get(f"{server}/explorer")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    refs = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert "explorer/vendor/leaflet/leaflet.js" in refs
    assert not [r for r in refs if "//" in r]  # relative: served by this server only
    own_js = (explorer.STATIC / "explorer.js").read_text()
    assert not re.search(r"https?://", own_js)


def test_leaflet_is_served_from_the_npm_installation(server: str) -> None:
    response = httpx.get(f"{server}/explorer/vendor/leaflet/leaflet.js")
    assert response.status_code == 200
    assert response.content == (explorer.LEAFLET_DIST / "leaflet.js").read_bytes()


def test_vendor_route_serves_nothing_outside_leaflets_dist(server: str) -> None:
    response = httpx.get(f"{server}/explorer/vendor/leaflet/..%2F..%2F..%2Fpackage.json")
    assert response.status_code == 404
    assert response.json()["description"] == "no Leaflet file '../../../package.json'"


def test_page_without_the_npm_installation_says_how_to_set_up(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(explorer, "LEAFLET_DIST", tmp_path / "missing")
    response = httpx.get(f"{server}/explorer")
    assert response.status_code == 503 and "scripts/setup-explorer.sh" in response.text


def test_features_carry_the_false_colour_of_each_chip(
    server: str, chips: tuple[str, list[str]], database_url: str
) -> None:
    cid, ids = chips
    fc = httpx.get(f"{server}/collections/{cid}/explorer/features").json()
    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        colours = false_colour(conn, cid)
    assert [f["id"] for f in fc["features"]] == sorted(ids)
    assert {f["id"]: f["properties"]["color"] for f in fc["features"]} == {
        i: colours.hex(i) for i in ids
    }


def test_features_with_a_bad_bbox_get_400_with_the_search_message(
    server: str, chips: tuple[str, list[str]]
) -> None:
    response = httpx.get(f"{server}/collections/{chips[0]}/explorer/features?bbox=1,2,x,4")
    assert response.status_code == 400
    assert response.json()["description"] == BBOX_MESSAGE.format("1,2,x,4")


def test_preview_png_renders_the_requested_size(server: str, chips: tuple[str, list[str]]) -> None:
    response = httpx.get(
        f"{server}/collections/{chips[0]}/preview.png",
        params={"bbox": "10,45,10.1,45.06", "width": 200, "height": 120},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(response.content) as memfile, memfile.open() as src:
            image = src.read()
    assert image.shape == (4, 120, 200)
    assert (image[3] == 255).mean() > 0.8  # the chips cover the area but for hairline gaps


def test_preview_png_refuses_an_oversized_image(server: str, chips: tuple[str, list[str]]) -> None:
    response = httpx.get(f"{server}/collections/{chips[0]}/preview.png?width=4096")
    assert response.status_code == 400
    assert "width must be in 1..2048" in response.json()["description"]


def test_preview_png_of_an_unknown_collection_is_404(server: str) -> None:
    response = httpx.get(f"{server}/collections/no-such-collection/preview.png")
    assert response.status_code == 404
