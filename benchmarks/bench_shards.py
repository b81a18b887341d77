"""Sharded benchmark (issue 17 item 3): the same collection on 1, 2 and 4 servers.

One run (bench_scale's manifold data, N x D, ivfflat-bit, the default kind at 768 dims)
is published into a fresh catalogue database per layout: ``0`` shards (one server, the
reference) and then each ``--layouts`` count of local shard servers
(scripts/provision-shards.sh, on this machine: every server shares its cores). Per layout:

- publish s (into the coordinator), place s (``catalog.shard_layout.place``: the rows moved
  through postgres_fdw in one transaction, then each shard's key, GiST and similarity
  index), and append s: a second collection of ``--append`` rows of the same space
  published into it (written through to the shards);
- ``--queries`` item queries through ``catalog.similarity.similar_with_plan`` per filter
  (unfiltered, bbox 10 % / 1 %, a datetime day): p50 / p95 ms, and how many queries
  returned exactly the one-server hits (ids and distances).

    nice -n 10 .venv/bin/python benchmarks/bench_shards.py --n 100000

Writes ``benchmarks/results/shards_<n>.json`` after every layout; never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT), str(ROOT / "benchmarks")]

from bench_scale import BASE_DAY, K, filters, write_shards  # noqa: E402

from conftest import create_database, drop_database  # noqa: E402
from embcat.catalog.publish import publish  # noqa: E402
from embcat.catalog.settings import DatabaseSettings  # noqa: E402
from embcat.catalog.similarity import SimilaritySpec, similar_with_plan  # noqa: E402
from embcat.catalog.store import shard_layout  # noqa: E402

CID = "bench-shards"


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def shard_databases(count: int) -> list[str]:
    out = subprocess.run(
        [str(ROOT / "scripts/provision-shards.sh"), str(count)],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    name = f"embcat_bench_{uuid.uuid4().hex[:8]}"
    urls = []
    for t in [u for u in out if u.startswith("postgresql://")][:count]:
        with psycopg.connect(_with_db(t, "postgres"), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE embcat_shard_template')
        urls.append(_with_db(t, name))
    return urls


def drop_shard_databases(urls: list[str]) -> None:
    for u in urls:
        with psycopg.connect(_with_db(u, "postgres"), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{urlsplit(u).path[1:]}" WITH (FORCE)')


def queries(url: str, rows: list[int], flts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per filter: the hits of each query and the p50 / p95 ms (second call timed)."""
    from pgvector.psycopg import register_vector

    out: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as c:
        register_vector(c)
        for f in flts:
            area = where = None
            if "box" in f:
                area = sql.SQL("st_makeenvelope({}, {}, {}, {}, 4326)").format(
                    *map(sql.Literal, f["box"])
                )
            if "day" in f:
                lo = BASE_DAY + timedelta(days=f["day"])
                where = sql.SQL("i.datetime >= {} and i.datetime < {}").format(
                    sql.Literal(lo), sql.Literal(lo + timedelta(hours=1))
                )
            times, hits, strategies = [], [], {}
            for r in rows:
                spec = SimilaritySpec.model_validate(
                    {"item": {"collection": CID, "id": f"chip-{r:08d}"}}
                )
                for _ in range(2):  # the first call warms plans, caches and connections
                    t = time.perf_counter()
                    got, plan = similar_with_plan(c, spec, where, K, area=area)
                    elapsed = time.perf_counter() - t
                times.append(elapsed * 1000)
                hits.append([[h.item_id, h.distance] for h in got])
                strategies[plan.strategy] = strategies.get(plan.strategy, 0) + 1
            out[f["name"]] = {
                "p50_ms": float(np.percentile(times, 50)),
                "p95_ms": float(np.percentile(times, 95)),
                "strategies": strategies,
                "hits": hits,
            }
            print(f["name"], {k: v for k, v in out[f["name"]].items() if k != "hits"}, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dims", type=int, default=768)
    p.add_argument("--layouts", default="2,4", help="shard counts after the one server")
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--append", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", type=Path, default=Path("/tmp/embcat-bench-shards"))
    a = p.parse_args()
    out_path = ROOT / "benchmarks" / "results" / f"shards_{a.n}.json"
    result: dict[str, Any] = {
        "n": a.n, "dims": a.dims, "load_average_at_start": os.getloadavg(), "layouts": {},
    }  # fmt: skip
    run, extra = a.work / f"main_{a.n}", a.work / f"append_{a.append}"
    if not (run / "manifest.json").exists():
        write_shards(run, "manifold", a.n, a.dims, a.seed)
    if not (extra / "manifest.json").exists():
        write_shards(extra, "manifold", a.append, a.dims, a.seed + 1)
    rng = np.random.default_rng(a.seed)
    flts = [f for f in filters(a.n, rng) if f["name"] != "bbox 0.1%"]
    rows = [int(r) for r in rng.choice(a.n, size=a.queries, replace=False)]
    reference: dict[str, Any] | None = None
    for count in [0, *(int(x) for x in a.layouts.split(",") if x)]:
        url = create_database("embcat_bench_shards")
        shard_urls = shard_databases(count) if count else []
        layout: dict[str, Any] = {"shards": count, "load_average": os.getloadavg()}
        try:
            settings = DatabaseSettings(database_url=url)
            t = time.perf_counter()
            res = publish(run, collection_id=CID, settings=settings, progress=False)
            layout["publish_s"] = round(time.perf_counter() - t, 2)
            if count:
                names = [f"b{k}" for k in range(count)]
                with psycopg.connect(url) as c:
                    for name, su in zip(names, shard_urls, strict=True):
                        shard_layout.add_shard(c, name, su, home_url=url)
                    c.commit()
                    placed = shard_layout.place(c, res.space_id, names)
                layout["place_s"] = placed["total_s"]
                layout["place_move_s"] = placed["move_s"]
            t = time.perf_counter()
            publish(extra, collection_id=CID + "-append", settings=settings, progress=False)
            layout["append_s"] = round(time.perf_counter() - t, 2)
            print(count, "shards:", layout, flush=True)
            got = queries(url, rows, flts)
            if reference is None:
                reference = got
            for name, q in got.items():
                same = sum(
                    1 for x, y in zip(q["hits"], reference[name]["hits"], strict=True) if x == y
                )
                q["identical_to_one_server"] = f"{same}/{len(rows)}"
                if count:
                    del q["hits"]
            layout["queries"] = got
        finally:
            drop_database(url)
            drop_shard_databases(shard_urls)
        result["layouts"][str(count)] = layout
        out_path.write_text(json.dumps(
            {**result, "layouts": {
                k: {**v, "queries": {n: {x: y for x, y in q.items() if x != "hits"}
                                     for n, q in v.get("queries", {}).items()}}
                for k, v in result["layouts"].items()}},
            indent=2,
        ))  # fmt: skip
    print(json.dumps({"load_average_at_end": os.getloadavg()}))


if __name__ == "__main__":
    main()
