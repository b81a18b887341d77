"""Similarity search benchmark: latency and recall@10, unfiltered and with bbox filters.

Data (``--data``): ``manifold`` (default) draws N vectors of D dimensions from a curved
32-dimensional manifold, like encoder output; ``mixture`` draws isotropic Gaussian clusters
that vary in all D dimensions, the worst case for ANN indexes (near-ties among the top
10). Stored as halfvec, one point
item each, scattered uniformly over a 100 x 100 degree area; bbox filters of 10 %, 1 % and
0.1 % of that area (a random position per query). The reference is an exact numpy brute
force over the same (float16-rounded) vectors; its latency is reported too.

Paths: ``sql`` calls ``catalog.similarity.similar`` on one psycopg connection (the query
strategy the API uses, all round trips included); ``http`` posts the STAC search with a
similarity clause to a uvicorn server of ``api.app:create_app`` on 127.0.0.1.

    .venv/bin/python benchmarks/bench_similarity.py --n 100000 --keep
    nohup nice -n 10 .venv/bin/python benchmarks/bench_similarity.py --n 1000000 --keep \
        > benchmarks/results/bench_similarity_1m.log 2>&1 &

``--keep`` keeps the benchmark database (``<db>_bench_sim_<n>``) for the next run, which
then skips generation, load and index build. Prints a table, writes
``benchmarks/results/similarity_<n>.json``; never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from vectorgen import (  # noqa: E402
    clustered_vectors,
    grid_points,
    item_ids,
    load_collection,
    manifold_vectors,
)

from embcat.catalog import migrate  # noqa: E402
from embcat.catalog.search import bbox_literal  # noqa: E402
from embcat.catalog.settings import DatabaseSettings, to_libpq_url  # noqa: E402
from embcat.catalog.similarity import SimilaritySettings, SimilaritySpec, similar_with_plan  # noqa: E402

EXTENT = (0.0, 0.0, 100.0, 100.0)
SELECTIVITIES = [None, 0.10, 0.01, 0.001]
K = 10


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def db_url(base: str, name: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path="/" + name))


def ensure_database(
    base: str, n: int, dims: int, seed: int, keep: bool, data: str
) -> tuple[str, bool]:
    """The benchmark database's URL, and whether the data had to be loaded."""
    base_db = urlsplit(base).path.lstrip("/") or "embcat"
    kind = "" if data == "mixture" else f"_{data}"
    name = f"{base_db}_bench_sim_{n}_{dims}_{seed}{kind}"
    with psycopg.connect(base, autocommit=True) as admin:
        exists = admin.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if exists and not keep:
            admin.execute(f'drop database "{name}" with (force)')
            exists = None
        if not exists:
            tmpl = admin.execute(
                "select 1 from pg_database where datname = %s", (f"{base_db}_template",)
            ).fetchone()
            admin.execute(
                f'create database "{name}"' + (f" template {base_db}_template" if tmpl else "")
            )
    url = db_url(base, name)
    migrate.upgrade(DatabaseSettings(database_url=url))
    with psycopg.connect(url) as c:
        row = c.execute("select count(*) from items where collection_id = 'bench'").fetchone()
        loaded = bool(row and row[0] == n)
        valid = c.execute(
            "select count(*) from pg_index x join pg_class c on c.oid = x.indexrelid"
            " where c.relname like 'embeddings_hnsw_space_%%' and x.indisvalid"
        ).fetchone()
    return url, not (loaded and valid and valid[0] > 0)


def load(url: str, vectors: np.ndarray, points: np.ndarray) -> dict[str, float]:
    with psycopg.connect(url) as c:
        register_vector(c)
        c.execute("delete from collections where id = 'bench'")
        c.execute("delete from embedding_spaces")
        started = time.perf_counter()
        load_collection(
            c, "bench", vectors, points, encoder_name="bench", build_index=False,
            index_kind="hnsw-halfvec",  # what this benchmark measures (768 d: auto is ivfflat-bit)
        )  # fmt: skip
        c.commit()
        loaded = time.perf_counter()
        from embcat.catalog.store.space_index import ensure_index
        from embcat.catalog.store.spaces import collection_space

        space = collection_space(c, "bench")
        assert space is not None
        ensure_index(c, space)
        c.commit()
        built = time.perf_counter()
        c.execute("vacuum analyze items") if c.autocommit else None
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("vacuum analyze items")
        c.execute("vacuum analyze embeddings")
    return {"load_s": loaded - started, "index_s": built - loaded}


def boxes(rng: np.random.Generator, selectivity: float | None, count: int) -> list:
    if selectivity is None:
        return [None] * count
    side = (EXTENT[2] - EXTENT[0]) * np.sqrt(selectivity)
    out = []
    for _ in range(count):
        x0 = rng.uniform(EXTENT[0], EXTENT[2] - side)
        # The grid spans y 0..100; boxes stay within valid latitudes (STAC bbox validation).
        y0 = rng.uniform(EXTENT[1], min(EXTENT[3], 90.0) - side)
        out.append((float(x0), float(y0), float(x0 + side), float(y0 + side)))
    return out


def brute_force(unit: np.ndarray, points: np.ndarray, row: int, box) -> tuple[list[int], float]:
    started = time.perf_counter()
    if box is None:
        idx = None
        dist = 1.0 - unit @ unit[row]
    else:
        x, y = points[:, 0], points[:, 1]
        idx = np.flatnonzero((x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3]))
        dist = 1.0 - unit[idx] @ unit[row]
    take = min(K + 1, len(dist))
    part = np.argpartition(dist, take - 1)[:take] if take < len(dist) else np.arange(len(dist))
    order = part[np.argsort(dist[part])]
    found = (idx[order] if idx is not None else order).tolist()
    elapsed = time.perf_counter() - started
    found = [j for j in found if j != row][:K]
    return found, elapsed


def area_bbox(box) -> sql.Composable | None:
    """The bbox as the API passes it: an area tested on the embedding rows' geometry."""
    if box is None:
        return None
    return bbox_literal(box)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(url: str) -> tuple[subprocess.Popen, str] | None:
    try:
        import embcat.api.app  # noqa: F401
    except ImportError:
        return None
    port = free_port()
    # no access log: one JSON line per request would drown the results
    env = {**os.environ, "EMBCAT_DATABASE_URL": url, "EMBCAT_ACCESS_LOG": "0"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "embcat.api.app:create_app",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
    )
    import httpx

    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/", timeout=1).status_code < 500:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    return None


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=768)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument(
        "--data",
        choices=["manifold", "mixture"],
        default="manifold",
        help="manifold: 32-d latent manifold (like encoder output); mixture: isotropic"
        " Gaussian clusters in all dims (worst case for ANN indexes)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--warmup", type=int, default=20, help="untimed queries per path and filter first"
    )
    ap.add_argument(
        "--paths",
        default="sql,http",
        help="comma list of sql, http, and sql-exact / sql-index (forced strategies)",
    )
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the benchmark DB")
    ap.add_argument(
        "--database-url",
        default=to_libpq_url(
            os.environ.get("EMBCAT_DATABASE_URL") or DatabaseSettings().database_url
        ),
    )
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]

    t0 = time.perf_counter()
    if args.data == "mixture":
        vectors = clustered_vectors(
            args.n, args.dims, clusters=args.clusters, spread=0.6, seed=args.seed
        )
    else:
        vectors = manifold_vectors(args.n, args.dims, clusters=args.clusters, seed=args.seed)
    points = grid_points(args.n, seed=args.seed + 1, extent=EXTENT)
    ids = item_ids(args.n)
    print(f"generated {args.n} x {args.dims} in {time.perf_counter() - t0:.1f} s", flush=True)
    url, must_load = ensure_database(
        args.database_url, args.n, args.dims, args.seed, args.keep, args.data
    )
    timings: dict[str, float] = {}
    if must_load:
        print("loading (binary COPY) and building the HNSW index ...", flush=True)
        timings = load(url, vectors, points)
        print(
            f"loaded in {timings['load_s']:.0f} s, index in {timings['index_s']:.0f} s", flush=True
        )
    # Reference vectors: exactly what the database holds, unit length (cosine).
    unit = vectors.astype(np.float16).astype(np.float32)
    del vectors
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)

    rng = np.random.default_rng(args.seed + 2)
    query_rows = rng.choice(args.n, args.queries, replace=False).tolist()
    settings = SimilaritySettings()
    force_index = settings.model_copy(update={"exact_threshold": 0, "exact_fraction": 0.0})
    server = start_server(url) if "http" in paths else None
    import httpx

    http = httpx.Client()
    if "http" in paths and server is None:
        print("http: api.app:create_app not available; HTTP path skipped", flush=True)
    results = []

    def run_query(path: str, row: int, box) -> tuple[list[str], str | None]:
        """One similarity query by the item of ``row`` through ``path``: ids, strategy."""
        spec = {"item": {"collection": "bench", "id": ids[row]}}
        if path.startswith("sql"):
            hits, plan = similar_with_plan(
                conn,
                SimilaritySpec.model_validate({**spec, "exact": path == "sql-exact"}),
                None,
                K,
                collections=["bench"],
                area=area_bbox(box),
                settings=force_index if path == "sql-index" else settings,
            )
            return [h.item_id for h in hits], plan.strategy
        body: dict = {"collections": ["bench"], "limit": K, "similarity": spec}
        if box is not None:
            body["bbox"] = list(box)
        # One keep-alive client, as a real client would use: a new httpx client per
        # request costs more than the query itself.
        assert server is not None
        r = http.post(server[1] + "/search", json=body, timeout=60)
        r.raise_for_status()
        return [f["id"] for f in r.json()["features"]], None

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            register_vector(conn)
            backend_pid = conn.info.backend_pid
            # Steady state, not start-up: each path first serves queries of every filter
            # (other rows), so that the server's connections have loaded PostGIS and
            # pgvector and the index pages are in shared buffers before anything is timed.
            warm_rows = rng.choice(args.n, args.warmup, replace=False).tolist()
            for path in paths:
                if path == "sql-exact" or (path == "http" and server is None):
                    continue
                for sel in SELECTIVITIES:
                    for row, box in zip(warm_rows, boxes(rng, sel, args.warmup), strict=True):
                        run_query(path, row, box)
            for sel in SELECTIVITIES:
                qboxes = boxes(rng, sel, args.queries)
                truths, np_times = [], []
                for row, box in zip(query_rows, qboxes, strict=True):
                    found, elapsed = brute_force(unit, points, row, box)
                    truths.append(set(found[:K]))
                    np_times.append(elapsed)
                label = "none" if sel is None else f"{sel:.1%}"
                results.append(
                    {
                        "path": "numpy",
                        "filter": label,
                        "p50_ms": pct(np_times, 50),
                        "p95_ms": pct(np_times, 95),
                        "recall": 1.0,
                    }
                )
                for path in paths:
                    if path == "http" and server is None:
                        continue
                    lat, got, strategies = [], 0, {"exact": 0, "index": 0}
                    per_query: list[float] = []
                    for i, (row, box) in enumerate(zip(query_rows, qboxes, strict=True)):
                        started = time.perf_counter()
                        found_ids, strategy = run_query(path, row, box)
                        if strategy:
                            strategies[strategy] += 1
                        elapsed = time.perf_counter() - started
                        lat.append(elapsed)
                        truth = {ids[j] for j in truths[i]}
                        per_query.append(len(truth & set(found_ids)) / max(len(truth), 1))
                        got += per_query[-1]
                    results.append(
                        {
                            "path": path,
                            "filter": label,
                            "p50_ms": pct(lat, 50),
                            "p95_ms": pct(lat, 95),
                            "recall": got / args.queries,
                            # the misses spread over many queries, or a few badly served
                            "recall_min": min(per_query),
                            "queries_below_0.9": sum(r < 0.9 for r in per_query),
                            **({"strategy": strategies} if path.startswith("sql") else {}),
                        }
                    )
                    print(json.dumps(results[-1]), flush=True)
            hwm = None
            try:
                status = Path(f"/proc/{backend_pid}/status").read_text()
                hwm = next(
                    int(line.split()[1]) / 1024
                    for line in status.splitlines()
                    if line.startswith("VmHWM")
                )
            except (OSError, StopIteration):
                pass
    finally:
        if server is not None:
            server[0].terminate()
            server[0].wait(10)
    report = {
        "benchmark": "similarity",
        "n": args.n,
        "dims": args.dims,
        "storage": "halfvec",
        "metric": "cosine",
        "queries": args.queries,
        "k": K,
        "clusters": args.clusters,
        "data": args.data,
        "settings": settings.model_dump(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load": timings,
        "peak_rss_mb": {"client": rss_mb(), "postgres_backend": hwm},
        "results": results,
    }
    print(f"\nN={args.n} D={args.dims} halfvec cosine, {args.queries} queries, k={K}")
    print(
        f"{'path':9} {'filter':>7} {'p50 ms':>9} {'p95 ms':>9} {'recall@10':>10} {'min':>5}"
        "  strategy"
    )
    for r in results:
        print(
            f"{r['path']:9} {r['filter']:>7} {r['p50_ms']:9.2f} {r['p95_ms']:9.2f}"
            f" {r['recall']:10.3f} {r.get('recall_min', 1.0):5.1f}  {r.get('strategy', '')}"
        )
    print(f"peak RSS: client {rss_mb():.0f} MB, postgres backend {hwm} MB")
    suffix = "" if args.data == "mixture" else f"_{args.data}"
    out = ROOT / "benchmarks" / "results" / f"similarity_{args.n}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    if not args.keep:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f'drop database "{urlsplit(url).path.lstrip("/")}" with (force)')


if __name__ == "__main__":
    main()
