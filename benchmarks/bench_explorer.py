"""Explorer benchmark: time to first rendered map, and click-to-results, in headless Chromium.

Datasets (one throwaway database, ``<db>_bench_explorer``):

- ``demo``: the collection ``embcat demo`` publishes (``catalog.demo.prepare_demo``: the
  sample scene encoded with mosaiks, 128 dimensions);
- ``grid-<n>``: ``--grid`` x ``--grid`` square chips with smooth synthetic vectors
  (tests/browser/harness.py ``load_chips``, 64 dimensions), to see how the page scales.

Measured with the browser harness of the tests (Selenium + Debian chromium, same flags):

- first map: ``performance.now()`` when the footprints are painted, i.e. milliseconds since
  navigation start. The first load of each dataset is *cold* (the server computes the PCA
  false colour); the next ``--loads`` loads hit the server's cache.
- click to results: from the click's DOM event to the ranked list and the highlights being
  painted, for ``--clicks`` chips picked at random (seeded); the same search sent straight
  to ``POST /search`` with httpx gives the API's share.
- features endpoint: server round trip of ``/collections/{cid}/explorer/features``, cold
  (cache emptied) and warm.

    .venv/bin/python benchmarks/bench_explorer.py [--grid 100] [--preview docs/img/preview.png]

Prints a table, writes ``benchmarks/results/explorer.json`` and (with ``--readme``) the
"Explorer (issue 8)" section of benchmarks/README.md. Never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import psycopg
from pgvector.psycopg import register_vector

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser.harness import click_chip, load_chips, open_explorer, start_chromium, wait_for  # noqa: E402

from embcat.catalog import migrate  # noqa: E402
from embcat.catalog.settings import DatabaseSettings, to_libpq_url  # noqa: E402

SECTION = "## Explorer (issue 8)"
# One client for every request: creating one per request costs an SSL context each time.
CLIENT = httpx.Client(timeout=180)


def create_database(base: str) -> str:
    base_db = urlsplit(base).path.lstrip("/") or "embcat"
    name = f"{base_db}_bench_explorer"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        tmpl = admin.execute(
            "select 1 from pg_database where datname = %s", (f"{base_db}_template",)
        ).fetchone()
        admin.execute(
            f'create database "{name}"' + (f" template {base_db}_template" if tmpl else "")
        )
    url = urlunsplit(urlsplit(base)._replace(path="/" + name))
    migrate.upgrade(DatabaseSettings(database_url=url))
    return url


def drop_database(base: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


def start_api(url: str) -> tuple[subprocess.Popen[bytes], str]:
    """``uvicorn api.app:create_app`` in its own process (the benchmark's Python threads
    must not share a GIL with the server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "embcat.api.app:create_app", "--factory", "--host",
         "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT,
        env={**os.environ, "EMBCAT_DATABASE_URL": url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/health", timeout=5)
            return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API server did not start")


def touch(url: str, cid: str) -> None:
    """Change one item so that the server's cached false colour is stale (a cold start)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "update items set properties = properties || jsonb_build_object('bench:touched',"
            " clock_timestamp()::text) where collection_id = %s"
            " and id = (select min(id) from items where collection_id = %s)",
            (cid, cid),
        )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure(
    driver: Any, base_url: str, url: str, cid: str, loads: int, clicks: int, seed: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"collection": cid}
    with psycopg.connect(url) as conn:
        out["chips"] = conn.execute(
            "select count(*) from items where collection_id = %s", (cid,)
        ).fetchone()[0]
        out["dimensions"] = conn.execute(
            "select s.dimensions from collections c join embedding_spaces s on s.id = c.space_id"
            " where c.id = %s",
            (cid,),
        ).fetchone()[0]
    # Features endpoint, cold (cache emptied) then warm.
    features_url = f"{base_url}/collections/{cid}/explorer/features"
    touch(url, cid)
    started = time.perf_counter()
    CLIENT.get(features_url).raise_for_status()
    out["features_cold_ms"] = (time.perf_counter() - started) * 1000
    warm = []
    for _ in range(5):
        started = time.perf_counter()
        CLIENT.get(features_url).raise_for_status()
        warm.append((time.perf_counter() - started) * 1000)
    out["features_warm_ms"] = statistics.median(warm)
    # First rendered map: the first load with an empty server cache, then warm loads.
    touch(url, cid)
    out["first_map_cold_ms"] = open_explorer(driver, base_url, cid, timeout=180)
    maps = [open_explorer(driver, base_url, cid, timeout=180) for _ in range(loads)]
    out["first_map_ms_p50"] = statistics.median(maps)
    out["first_map_ms_max"] = max(maps)
    # Click to results.
    ids = driver.execute_script("return window.explorerChipIds()")
    rng = np.random.default_rng(seed)
    browser_ms, api_ms = [], []
    for item in rng.choice(ids, size=min(clicks, len(ids)), replace=False):
        driver.execute_script("window.explorerLastSearch = null")
        click_chip(driver, str(item))
        wait_for(
            driver,
            f"window.explorerLastSearch && window.explorerLastSearch.body.similarity.item.id"
            f" === {str(item)!r}",
            timeout=120,
        )
        browser_ms.append(
            float(driver.execute_script("return window.explorerTimings.lastSearchMs"))
        )
        body = driver.execute_script("return window.explorerLastSearch.body")
        started = time.perf_counter()
        CLIENT.post(f"{base_url}/search", json=body).raise_for_status()
        api_ms.append((time.perf_counter() - started) * 1000)
    out["clicks"] = len(browser_ms)
    out["click_to_results_ms_p50"] = statistics.median(browser_ms)
    out["click_to_results_ms_p90"] = pct(browser_ms, 90)
    out["search_api_ms_p50"] = statistics.median(api_ms)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| dataset | chips | dims | first map, cold server cache (ms) | first map, p50 (ms) |"
        " click to results p50 / p90 (ms) | POST /search alone p50 (ms) |"
        " features endpoint cold / warm (ms) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['chips']} | {r['dimensions']} | {r['first_map_cold_ms']:.0f} |"
            f" {r['first_map_ms_p50']:.0f} | {r['click_to_results_ms_p50']:.0f} /"
            f" {r['click_to_results_ms_p90']:.0f} | {r['search_api_ms_p50']:.1f} |"
            f" {r['features_cold_ms']:.0f} / {r['features_warm_ms']:.0f} |"
        )
    return "\n".join(lines)


def write_readme(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    path = ROOT / "benchmarks" / "README.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = "\n".join(
        [
            SECTION,
            "",
            "`.venv/bin/python benchmarks/bench_explorer.py --readme`: the explorer page in",
            "headless Chromium (the browser tests' harness and flags) against `uvicorn",
            "embcat.api.app:create_app` in its own process on 127.0.0.1, on the `embcat demo`",
            "collection and a synthetic grid of square chips (smooth synthetic vectors).",
            "",
            table(rows),
            "",
            "- *first map*: `performance.now()` when the footprints are painted, i.e. ms since",
            "  navigation start (HTML, Leaflet, `/collections`, the collection, its coloured",
            "  footprints, canvas paint). *cold*: the server computes the PCA false colour",
            f"  first; p50 over {meta['loads']} later loads (colours cached per collection,",
            "  keyed by its change version).",
            "- *click to results*: from the click's DOM event to the ranked list and the map",
            f"  highlights painted, {meta['clicks']} random chips (seeded). *POST /search alone*:",
            "  the same request sent with httpx (the API's share of it).",
            f"- Machine: {meta['machine']}, Chromium {meta['chromium']}; 1-minute load average",
            f"  at the end of the run: {meta['load_average_1min_at_end']} (the 2 cores are shared",
            "  with other work: read the ratios, not the absolute times). Raw numbers:",
            "  `benchmarks/results/explorer.json`.",
            "",
        ]
    )
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=int, default=100, help="side of the synthetic grid")
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", type=Path, help="write the demo's preview.png here")
    parser.add_argument("--screenshot", type=Path, help="write a screenshot after a click")
    parser.add_argument("--readme", action="store_true", help="update benchmarks/README.md")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument(
        "--demo-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "embcat-bench-explorer-demo",
        help="scene and encode run of the demo (reused when present)",
    )
    args = parser.parse_args()

    base = to_libpq_url(os.environ.get("EMBCAT_DATABASE_URL") or DatabaseSettings().database_url)
    url = create_database(base)
    try:
        from embcat.catalog.demo import DEMO_COLLECTION, prepare_demo

        args.demo_dir.mkdir(parents=True, exist_ok=True)
        info = prepare_demo(
            args.demo_dir, settings=DatabaseSettings(database_url=url), echo=lambda _: None
        )
        grid_id = f"grid-{args.grid * args.grid}"
        with psycopg.connect(url) as conn:
            register_vector(conn)
            load_chips(conn, grid_id, cols=args.grid, rows=args.grid, dims=64, seed=args.seed)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("vacuum analyze")

        proc, base_url = start_api(url)
        driver = start_chromium()
        try:
            rows = []
            for dataset, cid in (("demo", DEMO_COLLECTION), (grid_id, grid_id)):
                r = measure(driver, base_url, url, cid, args.loads, args.clicks, args.seed)
                rows.append({"dataset": dataset, **r})
                print(f"{dataset}: done", file=sys.stderr)
            if args.screenshot:
                open_explorer(driver, base_url, DEMO_COLLECTION)
                click_chip(driver, info.example_item)
                wait_for(driver, "window.explorerLastSearch")
                driver.save_screenshot(str(args.screenshot))
            if args.preview:
                png = CLIENT.get(f"{base_url}/collections/{DEMO_COLLECTION}/preview.png?width=512")
                png.raise_for_status()
                args.preview.parent.mkdir(parents=True, exist_ok=True)
                args.preview.write_bytes(png.content)
            chromium = driver.capabilities.get("browserVersion", "?")
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(30)
    finally:
        if not args.keep:
            drop_database(base, url)

    meta = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "chromium": chromium,
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "loads": args.loads,
        "clicks": args.clicks,
        "seed": args.seed,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(table(rows))
    out = ROOT / "benchmarks" / "results" / "explorer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if args.readme:
        write_readme(rows, meta)


if __name__ == "__main__":
    main()
