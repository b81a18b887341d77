"""Publish with chip thumbnails (issue 20): the cost of the optional thumbnail column.

In one run, on the same server and the same N chips x D dims (shards + manifest from
tests/shardgen.py): ours without thumbnails, then the same shards with a ``thumbnail``
column of 64 px PNGs rendered by ``encoders.thumbnails.render`` from textured true-colour
chips (about the size real chips give: docs/hpc.md), each publish into a fresh database
(index deferred). Then the thumbnail route's SQL (``catalog.imagery.thumbnail_png``) for
200 random items. Each publish runs in a child process (peak RSS is its own).

    nice -n 10 .venv/bin/python benchmarks/bench_thumbnails.py [--n 50000] [--dims 768]

Prints a table, writes benchmarks/results/thumbnails_<n>.json and never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from imagerydata import add_thumbnails  # noqa: E402
from shardgen import write_run  # noqa: E402

from conftest import create_database, drop_database  # noqa: E402
from embcat.catalog.settings import DatabaseSettings  # noqa: E402
from embcat.encoders.thumbnails import render  # noqa: E402

CID = "bench-thumbs"


def _publish(url: str, run: str, queue: Any) -> None:
    from embcat.catalog.publish import publish

    t = time.perf_counter()
    res = publish(Path(run), collection_id=CID, settings=DatabaseSettings(database_url=url),
                  progress=False, defer_index=True)  # fmt: skip
    queue.put(
        {
            "rows": res.rows,
            "elapsed_s": round(time.perf_counter() - t, 3),
            "rows_per_s": round(res.rows / (time.perf_counter() - t), 1),
            "timings": res.timings,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    )


def publish_in_child(url: str, run: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_publish, args=(url, str(run), queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out  # type: ignore[no-any-return]


def thumbnail_maker(seed: int = 0) -> Any:
    """64 px PNGs of textured reflectance chips (a pool of 256 distinct ones, reused)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(300, 2500, size=(256, 3, 1, 1))
    chips = base * (1 + rng.normal(0, 0.15, size=(256, 3, 64, 64)))
    pool = render(np.clip(chips, 1, 10000), ["B04", "B03", "B02"])
    return lambda k, _id: pool[k % len(pool)], float(np.mean([len(p) for p in pool]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dims", type=int, default=768)
    args = ap.parse_args()
    load = os.getloadavg()
    results: dict[str, Any] = {"n": args.n, "dims": args.dims, "load_before": load}
    with tempfile.TemporaryDirectory(prefix="bench-thumbs-") as tmp:
        plain = write_run(Path(tmp) / "plain", args.n, dims=args.dims, seed=1, shards=4)
        with_t = write_run(Path(tmp) / "thumbs", args.n, dims=args.dims, seed=1, shards=4)
        make, mean_bytes = thumbnail_maker()
        add_thumbnails(with_t, make)
        results["thumbnail_mean_bytes"] = round(mean_bytes, 1)
        for name, run in (("without", plain), ("with", with_t)):
            url = create_database("embcat_bench_thumbs")
            try:
                results[name] = publish_in_child(url, run)
                if name == "with":
                    from embcat.catalog.imagery import thumbnail_png

                    with psycopg.connect(url) as c:
                        size = c.execute(
                            "select pg_total_relation_size('item_thumbnails')"
                        ).fetchone()[0]  # type: ignore[index]
                        picked = "select id from items order by random() limit 200"
                        ids = [r[0] for r in c.execute(picked).fetchall()]
                        times = []
                        for iid in ids:
                            t = time.perf_counter()
                            thumbnail_png(c, CID, iid)
                            times.append((time.perf_counter() - t) * 1000)
                    results["item_thumbnails_mb"] = round(size / 2**20, 1)
                    results["thumbnail_sql_p50_ms"] = round(float(np.median(times)), 3)
            finally:
                drop_database(url)
    results["load_after"] = os.getloadavg()
    w, wo = results["with"], results["without"]
    results["ratio_rows_per_s"] = round(w["rows_per_s"] / wo["rows_per_s"], 3)
    print(f"{'publish':<28}{'rows/s':>10}{'s':>8}{'peak RSS MB':>13}")
    for name in ("without", "with"):
        r = results[name]
        print(f"{name + ' thumbnails':<28}{r['rows_per_s']:>10,.0f}{r['elapsed_s']:>8.1f}"
              f"{r['peak_rss_mb']:>13.0f}")  # fmt: skip
    print(
        f"ratio with/without: {results['ratio_rows_per_s']}; thumbnails"
        f" {results['thumbnail_mean_bytes']:.0f} B each, table"
        f" {results['item_thumbnails_mb']} MB; thumbnail SQL p50"
        f" {results['thumbnail_sql_p50_ms']} ms; load {load}"
    )
    out = ROOT / "benchmarks" / "results" / f"thumbnails_{args.n}.json"
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
