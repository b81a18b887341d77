"""Headless Chromium for the explorer page (browser test and benchmark), and its test data.

    from browser.harness import start_chromium, open_explorer, click_chip
                                            # tests/ is on sys.path under pytest

The browser is Debian's ``chromium`` driven through ``chromium-driver`` (Selenium, from
PyPI); ``scripts/setup-explorer.sh --browser`` installs both. When either is missing,
``start_chromium`` raises ``BrowserMissing`` with the command to run: the browser test fails
with that message instead of skipping.

``load_chips`` writes a collection of square chips on a regular lon/lat grid whose vectors
vary smoothly over space (a few "land covers" mixed by smooth random fields), so that the
false colour and the similarity results look like an embedding field, not noise.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SETUP_HINT = "run `scripts/setup-explorer.sh --browser` (as root) or `make setup`"


class BrowserMissing(RuntimeError):
    """Chromium or chromedriver is not installed."""


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver) paths; EMBCAT_CHROMIUM / EMBCAT_CHROMEDRIVER override."""
    chromium = os.environ.get("EMBCAT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = (
        os.environ.get("EMBCAT_CHROMEDRIVER")
        or shutil.which("chromedriver")
        or "/usr/bin/chromedriver"
    )
    missing = [p for p in (chromium, driver) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        raise BrowserMissing(
            f"the explorer's browser tests need Chromium and chromedriver; not found:"
            f" {', '.join(missing)}. {SETUP_HINT}"
        )
    return chromium, driver


def start_chromium(width: int = 1200, height: int = 800) -> Any:
    """A Selenium WebDriver on headless Chromium with the project's flags."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:  # the test extra was not installed
        raise BrowserMissing(
            f"selenium is not installed ({exc}); pip install -e '.[test]'"
        ) from exc
    chromium, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--window-size={width},{height}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def wait_for(driver: Any, script: str, timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll ``return <script>`` in the page until it is truthy; TimeoutError with the
    page's status line otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        if time.monotonic() > deadline:
            status = driver.execute_script(
                "const s = document.getElementById('status'); return s && s.textContent"
            )
            raise TimeoutError(f"waited {timeout} s for {script!r}; page status: {status!r}")
        time.sleep(interval)


def open_explorer(driver: Any, base_url: str, collection_id: str, timeout: float = 20.0) -> float:
    """Load the page for a collection; return the time to first rendered map (ms since
    navigation start, as the page measured it)."""
    driver.get(f"{base_url}/explorer?collection={collection_id}")
    return float(
        wait_for(driver, "window.explorerTimings && window.explorerTimings.mapRendered", timeout)
    )


def click_chip(driver: Any, item_id: str, *, shift: bool = False) -> None:
    """A real mouse click (WebDriver actions) on the chip's centre on the map."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    point = driver.execute_script("return window.explorerChipPoint(arguments[0])", item_id)
    if point is None:
        raise LookupError(f"chip {item_id!r} is not on the map")
    element = driver.find_element(By.ID, "map")
    size = element.size
    actions = ActionChains(driver)
    if shift:
        actions.key_down(Keys.SHIFT)
    actions.move_to_element_with_offset(
        element, int(point["x"] - size["width"] / 2), int(point["y"] - size["height"] / 2)
    ).click()
    if shift:
        actions.key_up(Keys.SHIFT)
    actions.perform()


def smooth_field_vectors(
    cols: int, rows: int, dims: int, *, covers: int = 5, seed: int = 0
) -> np.ndarray:
    """(rows*cols, dims) float32 vectors that vary smoothly over a cols x rows grid."""
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((covers, dims))
    y, x = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    weights = []
    for _ in range(covers):
        fx, fy, px, py = rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0), *rng.uniform(0, 6.3, 2)
        weights.append(np.sin(fx * 2 * np.pi * x + px) * np.cos(fy * 2 * np.pi * y + py))
    w = np.stack(weights, axis=-1).reshape(-1, covers)
    w = np.exp(3.0 * w)
    w /= w.sum(axis=1, keepdims=True)
    vectors = w @ prototypes + rng.standard_normal((rows * cols, dims)) * 0.05
    return vectors.astype(np.float32)


def load_chips(
    conn: psycopg.Connection,
    collection_id: str,
    *,
    cols: int = 12,
    rows: int = 8,
    dims: int = 32,
    origin: tuple[float, float] = (10.0, 45.0),
    size: float = 0.01,
    seed: int = 0,
) -> list[str]:
    """A collection of cols x rows square chips (side ``size`` degrees) with smooth vectors,
    in the caller's transaction. Returns the item ids, row by row from the south-west."""
    from vectorgen import item_ids, load_collection

    n = cols * rows
    k = np.arange(n)
    centres = np.column_stack(
        [origin[0] + (k % cols + 0.5) * size, origin[1] + (k // cols + 0.5) * size]
    )
    ids = item_ids(n, prefix="chip-")
    load_collection(
        conn,
        collection_id,
        smooth_field_vectors(cols, rows, dims, seed=seed),
        centres,
        ids=ids,
        build_index=n > 5000,
    )
    half = size / 2 * 0.96  # a hairline gap between chips
    conn.execute(
        "update items set geometry = ST_Expand(geometry, %(h)s),"
        " bbox = array[ST_X(geometry) - %(h)s, ST_Y(geometry) - %(h)s,"
        "              ST_X(geometry) + %(h)s, ST_Y(geometry) + %(h)s]"
        " where collection_id = %(c)s",
        {"h": half, "c": collection_id},
    )
    # What a published collection carries: the encoder (MLM) and each chip's source scene.
    conn.execute(
        "update collections set stac = stac || %s::jsonb where id = %s",
        ('{"mlm:name": "smooth-field", "mlm:architecture": "synthetic"}', collection_id),
    )
    conn.execute(
        "update items set links = jsonb_build_array(jsonb_build_object("
        " 'rel', 'derived_from', 'type', 'image/tiff; application=geotiff',"
        " 'href', 'https://scenes.example.org/S2A_T32TQR_' || (change_seq %% 4) || '.tif'))"
        " where collection_id = %s",
        (collection_id,),
    )
    return ids
