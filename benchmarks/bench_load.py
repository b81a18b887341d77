"""Load benchmark (issue 7): the API under concurrent clients, and during a large publish.

A benchmark database gets one collection of N point items with D-dimensional halfvec
vectors (HNSW indexed). ``embcat serve`` runs as a subprocess on 127.0.0.1 (W workers, pool
bound EMBCAT_DB_POOL_MAX per worker). An asyncio + httpx client keeps C requests in flight
for T seconds per endpoint and concurrency:

- ``item``:   GET /collections/{c}/items/{id}              (random id)
- ``search``: GET /search?collections=c&bbox=<1 % box>&datetime=<interval>&limit=10
- ``similar``: GET /collections/{c}/items/{id}/similar?limit=10   (HNSW kNN)

Reported per run: requests, errors (non-2xx or transport), throughput, p50/p90/p99, the
server's peak RSS (all processes), and the peak number of database connections the server
held (pg_stat_activity, application_name embcat-api) next to the bound. Then a publish of
P rows (``embcat publish`` subprocess, one transaction) runs while the search load goes on:
search latency during the publish vs before, errors, publish rate.

The client runs on the same (2-core) machine as the server and PostgreSQL, so absolute
figures are a floor; compare runs on the same machine only.

    nice -n 10 .venv/bin/python benchmarks/bench_load.py            # defaults below
    nice -n 10 .venv/bin/python benchmarks/bench_load.py --items 100000 --duration 20

Prints a table, writes ``benchmarks/results/load.json``; never asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from embcat.catalog import migrate  # noqa: E402
from embcat.catalog.settings import DatabaseSettings, to_libpq_url  # noqa: E402

BASE_URL = to_libpq_url(os.environ.get("EMBCAT_DATABASE_URL") or DatabaseSettings().database_url)
COLLECTION = "load-bench"


def db_url(name: str) -> str:
    return urlunsplit(urlsplit(BASE_URL)._replace(path="/" + name))


def create_database(name: str) -> str:
    base_db = urlsplit(BASE_URL).path.lstrip("/") or "embcat"
    with psycopg.connect(BASE_URL, autocommit=True) as conn:
        tmpl = conn.execute(
            "select 1 from pg_database where datname = %s", (f"{base_db}_template",)
        ).fetchone()
        template = f" template {base_db}_template" if tmpl else ""
        conn.execute(f'create database "{name}"{template}')
    url = db_url(name)
    migrate.upgrade(DatabaseSettings(database_url=url))
    return url


def drop_database(name: str) -> None:
    with psycopg.connect(BASE_URL, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def load(url: str, n: int, dims: int) -> tuple[list[str], float]:
    from pgvector.psycopg import register_vector
    from vectorgen import clustered_vectors, grid_points, load_collection

    t0 = time.perf_counter()
    vectors = clustered_vectors(n, dims, clusters=100, seed=7)
    points = grid_points(n, seed=8, extent=(0, 0, 20, 20))
    with psycopg.connect(url) as conn:
        register_vector(conn)
        load_collection(conn, COLLECTION, vectors, points)
        ids = [r[0] for r in conn.execute("select id from items order by id").fetchall()]
    return ids, time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(url: str, workers: int, pool_max: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "EMBCAT_DATABASE_URL": url,
        "EMBCAT_DB_POOL_MAX": str(pool_max),
        "EMBCAT_MAX_LIMIT": "1000",
        # Every simulated client of this benchmark shares one address (127.0.0.1): the
        # per-client limit would turn the queue it measures into 429s.
        "EMBCAT_MAX_REQUESTS_PER_CLIENT": "0",
    }
    cmd = [str(ROOT / ".venv/bin/embcat"), "serve", "--port", str(port)]
    cmd += ["--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start")


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (uvicorn workers), MiB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Sampler:
    """Samples the server's RSS and its database connections every 0.25 s (a thread)."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url
        self.peak_rss_mb = 0.0
        self.peak_connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                self.peak_rss_mb = max(self.peak_rss_mb, process_tree_rss_mb(self.pid))
                row = conn.execute(
                    "select count(*) from pg_stat_activity"
                    " where datname = current_database() and application_name = 'embcat-api'"
                ).fetchone()
                self.peak_connections = max(self.peak_connections, int(row[0]) if row else 0)
                self._stop.wait(0.25)


def request_factory(kind: str, ids: list[str], seed: int) -> Any:
    rng = random.Random(seed)

    def make() -> tuple[str, str, dict[str, Any]]:
        if kind == "item":
            return "GET", f"/collections/{COLLECTION}/items/{rng.choice(ids)}", {}
        if kind == "similar":
            path = f"/collections/{COLLECTION}/items/{rng.choice(ids)}/similar"
            return "GET", path, {"limit": 10}
        x, y = rng.uniform(0, 18), rng.uniform(0, 18)  # 2 x 2 degrees of 20 x 20: 1 %
        start = f"2024-01-{rng.randint(1, 20):02d}T00:00:00Z"
        return (
            "GET",
            "/search",
            {
                "collections": COLLECTION,
                "bbox": f"{x:.4f},{y:.4f},{x + 2:.4f},{y + 2:.4f}",
                "datetime": f"{start}/..",
                "limit": 10,
            },
        )

    return make


async def run_load(
    base: str, kind: str, ids: list[str], concurrency: int, duration: float, seed: int = 0
) -> dict[str, Any]:
    make = request_factory(kind, ids, seed)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:
                method, path, params = make()
                t0 = time.perf_counter()
                try:
                    r = await client.request(method, path, params=params)
                    code = str(r.status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                if not code.startswith("2"):
                    errors[code] = errors.get(code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000
    return {
        "endpoint": kind,
        "concurrency": concurrency,
        "duration_s": round(elapsed, 2),
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_codes": errors,
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p90_ms": round(float(np.percentile(ms, 90)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "max_ms": round(float(ms.max()), 2) if len(ms) else None,
    }


def publish_during_load(
    base: str, url: str, ids: list[str], rows: int, dims: int, concurrency: int
) -> dict[str, Any]:
    """Search load before (baseline) and during an ``embcat publish`` of ``rows`` rows."""
    from shardgen import write_run

    with tempfile.TemporaryDirectory(prefix="embcat-load-") as tmp:
        t0 = time.perf_counter()
        run = write_run(Path(tmp) / "run", rows, dims, seed=9, shards=4, encoder="load-publish")
        write_s = time.perf_counter() - t0
        baseline = asyncio.run(run_load(base, "search", ids, concurrency, 10, seed=3))
        env = {**os.environ, "EMBCAT_DATABASE_URL": url}
        cmd = [str(ROOT / ".venv/bin/embcat"), "publish", str(run)]
        cmd += ["--collection", "load-publish", "--no-progress", "--json"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        during: list[dict[str, Any]] = []
        while proc.poll() is None:
            during.append(asyncio.run(run_load(base, "search", ids, concurrency, 5, seed=4)))
        out, err = proc.communicate()
        publish_s = time.perf_counter() - t0
    requests = sum(d["requests"] for d in during)
    return {
        "rows": rows,
        "dims": dims,
        "shard_write_s": round(write_s, 1),
        "publish_exit_code": proc.returncode,
        "publish_s": round(publish_s, 1),
        "publish_rows_per_s": round(rows / publish_s, 0),
        "publish_error": err.strip()[-500:] if proc.returncode else None,
        "search_baseline": baseline,
        "search_during_publish": {
            "windows": len(during),
            "requests": requests,
            "errors": sum(d["errors"] for d in during),
            "throughput_rps": round(requests / max(sum(d["duration_s"] for d in during), 1e-9), 1),
            "p50_ms_median_window": float(np.median([d["p50_ms"] for d in during]))
            if during
            else None,
            "p99_ms_worst_window": max((d["p99_ms"] or 0) for d in during) if during else None,
            "per_window": during,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--endpoints", default="item,search,similar")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pool-max", type=int, default=10)
    ap.add_argument("--publish-rows", type=int, default=100_000, help="0: skip")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/load.json"))
    args = ap.parse_args()

    name = f"embcat_bench_load_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    proc: subprocess.Popen | None = None
    try:
        ids, load_s = load(url, args.items, args.dims)
        print(f"loaded {len(ids):,} items x {args.dims} dims in {load_s:.1f} s")
        proc, base = start_server(url, args.workers, args.pool_max)
        bound = args.workers * args.pool_max
        runs = []
        for kind in args.endpoints.split(","):
            for c in (int(x) for x in args.concurrency.split(",")):
                with Sampler(proc.pid, url) as sampler:
                    res = asyncio.run(run_load(base, kind, ids, c, args.duration))
                res["peak_server_rss_mb"] = round(sampler.peak_rss_mb, 1)
                res["peak_db_connections"] = sampler.peak_connections
                res["db_connection_bound"] = bound
                runs.append(res)
                print(
                    f"{kind:8} c={c:<3} {res['requests']:>7,} req {res['errors']:>4} err"
                    f" {res['throughput_rps']:>8.1f} req/s  p50 {res['p50_ms']:>8.1f} ms"
                    f"  p99 {res['p99_ms']:>8.1f} ms  rss {res['peak_server_rss_mb']:>6.0f} MiB"
                    f"  db conns {res['peak_db_connections']}/{bound}",
                    flush=True,
                )
        during = None
        if args.publish_rows:
            with Sampler(proc.pid, url) as sampler:
                during = publish_during_load(base, url, ids, args.publish_rows, args.dims, 16)
            during["peak_server_rss_mb"] = round(sampler.peak_rss_mb, 1)
            during["peak_db_connections"] = sampler.peak_connections
            b, d = during["search_baseline"], during["search_during_publish"]
            print(
                f"publish {args.publish_rows:,} rows: {during['publish_s']} s"
                f" (exit {during['publish_exit_code']}); search c=16 before: p50 {b['p50_ms']} ms"
                f" p99 {b['p99_ms']} ms {b['throughput_rps']} req/s; during: p50 (median window)"
                f" {d['p50_ms_median_window']} ms, p99 (worst window) {d['p99_ms_worst_window']}"
                f" ms, {d['throughput_rps']} req/s, {d['errors']} errors of {d['requests']}"
            )
        result = {
            "benchmark": "load",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "load_avg_at_end": os.getloadavg(),
            "items": len(ids),
            "dims": args.dims,
            "server": {"workers": args.workers, "db_pool_max_per_worker": args.pool_max},
            "client": "python asyncio + httpx on the same machine",
            "runs": runs,
            "publish_during_load": during,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_database(name)


if __name__ == "__main__":
    main()
