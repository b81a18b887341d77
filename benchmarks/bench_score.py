"""Scoring benchmark: a few-shot model applied to every chip of a collection, in PostgreSQL.

Data: N manifold vectors of D dimensions (``tests/vectorgen.py``, like encoder output),
stored as halfvec, one point item each (no HNSW index: scoring scans exactly). The model
is ``linear`` from two positives and one negative (``catalog.score.fit``). Measured, in one
run on the same data:

- ``db threshold``: ``catalog.score.rows`` at the default threshold (0.5), every row
  streamed to the client (what the API and CLI do before formatting);
- ``db top``: the best 1,000 chips (a top-N sort in PostgreSQL);
- ``db geojson``: the threshold result formatted as GeoJSON (``catalog.score.stream``);
- ``numpy``: the same scores computed in memory from the same (float16-rounded) vectors
  as a float32 matrix of unit rows, the peer a data scientist would write (loading the
  vectors and normalising them once are not counted: one matrix-vector product per model).

Peak RSS is this process's (VmHWM), reset before the database steps and again before
the numpy step (which holds the N x D float32 matrix, ``N·D·4`` bytes, besides). Prints a
table, writes ``benchmarks/results/score_<n>.json``; never asserts a time.

    nice -n 10 .venv/bin/python benchmarks/bench_score.py --n 100000 --keep
    nice -n 10 .venv/bin/python benchmarks/bench_score.py --n 1000000 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchcommon import rss_mb  # noqa: E402
from vectorgen import grid_points, item_ids, load_collection, manifold_vectors  # noqa: E402

from embcat.catalog import migrate, score  # noqa: E402
from embcat.catalog.settings import DatabaseSettings, to_libpq_url  # noqa: E402


def reset_peak() -> None:
    """Reset the peak RSS (Linux: writing 5 to clear_refs), so each phase shows its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def ensure_database(base: str, n: int, dims: int, keep: bool) -> tuple[str, bool]:
    base = to_libpq_url(base)
    name = f"{urlsplit(base).path.lstrip('/') or 'embcat'}_bench_score_{n}_{dims}"
    url = urlunsplit(urlsplit(base)._replace(path="/" + name))
    with psycopg.connect(base, autocommit=True) as admin:
        exists = admin.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if exists and not keep:
            admin.execute(f'drop database "{name}" with (force)')
            exists = None
        if not exists:
            base_db = urlsplit(base).path.lstrip("/") or "embcat"
            tmpl = admin.execute(
                "select 1 from pg_database where datname = %s", (f"{base_db}_template",)
            ).fetchone()
            admin.execute(
                f'create database "{name}"' + (f" template {base_db}_template" if tmpl else "")
            )
    migrate.upgrade(DatabaseSettings(database_url=url))
    with psycopg.connect(url) as c:
        row = c.execute("select count(*) from embeddings where collection_id = 'bench'").fetchone()
    return url, not (row and row[0] == n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the benchmark DB")
    ap.add_argument(
        "--database-url",
        default=os.environ.get("EMBCAT_DATABASE_URL") or DatabaseSettings().database_url,
    )
    args = ap.parse_args()
    out_path = ROOT / "benchmarks" / "results" / f"score_{args.n}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "n": args.n,
        "dims": args.dims,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "steps": {},
    }

    def save() -> None:
        out_path.write_text(json.dumps(result, indent=1) + "\n")

    url, must_load = ensure_database(args.database_url, args.n, args.dims, args.keep)
    vectors = manifold_vectors(args.n, args.dims, seed=args.seed)
    if must_load:
        started = time.perf_counter()
        with psycopg.connect(url) as c:
            register_vector(c)
            c.execute("delete from collections where id = 'bench'")
            load_collection(
                c, "bench", vectors, grid_points(args.n, seed=args.seed + 1),
                encoder_name="bench-score", build_index=False,
            )  # fmt: skip
            c.commit()
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("vacuum analyze embeddings")
            c.execute("vacuum analyze items")
        result["load_s"] = time.perf_counter() - started
        print(f"loaded {args.n} rows in {result['load_s']:.1f} s", flush=True)
    ids = item_ids(args.n)
    # Two positives of one neighbourhood and a negative far from it.
    rng = np.random.default_rng(args.seed + 5)
    anchor = int(rng.integers(0, args.n))
    sample = rng.choice(args.n, size=min(args.n, 20_000), replace=False)
    unit = vectors[sample] / np.linalg.norm(vectors[sample], axis=1, keepdims=True)
    a = vectors[anchor] / np.linalg.norm(vectors[anchor])
    sims = unit @ a
    near = int(sample[np.argsort(-sims)[1]])
    far = int(sample[np.argmin(sims)])
    body = {"positive": [ids[anchor], ids[near]], "negative": [ids[far]]}
    result["examples"] = body

    def step(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        rows = fn()
        seconds = time.perf_counter() - t0
        result["steps"][name] = {
            "s": seconds,
            "rows_out": rows,
            "rows_per_s": args.n / seconds,
            "peak_rss_mb": rss_mb(),
        }
        save()
        print(f"{name:14s} {seconds:8.3f} s  {args.n / seconds:12,.0f} rows/s"
              f"  out {rows:9d}  peak RSS {rss_mb():8.0f} MB", flush=True)  # fmt: skip

    del vectors, unit, sample, sims
    import gc

    gc.collect()
    reset_peak()
    with psycopg.connect(url) as conn:
        register_vector(conn)
        req = score.parse_request(body)
        t0 = time.perf_counter()
        model = score.fit(conn, "bench", req)
        conn.rollback()
        result["fit_s"] = time.perf_counter() - t0
        print(f"fit            {result['fit_s']:8.3f} s", flush=True)

        def db_rows(r: score.ScoreRequest) -> int:
            # The fitted model with the request's cut (the fit is timed on its own above).
            m = replace(model, top=r.top, threshold=None if r.top else model.threshold)
            return sum(len(b) for b in score.rows(conn, m, r))

        step("db threshold", lambda: db_rows(req))
        step("db threshold 2", lambda: db_rows(req))
        top = score.parse_request({**body, "top": 1000})
        step("db top 1000", lambda: db_rows(top))

        def geojson() -> int:
            count = [0]
            size = 0
            for chunk in score.stream(
                conn, model, req, on_batch=lambda k: count.__setitem__(0, count[0] + k)
            ):
                size += len(chunk)
            result["geojson_bytes"] = size
            return count[0]

        step("db geojson", geojson)

    # The peer: numpy over the same stored (float16-rounded) values, in memory (generated
    # again: the same seed gives the same vectors; generation is not timed).
    matrix = manifold_vectors(args.n, args.dims, seed=args.seed).astype(np.float16)
    matrix = matrix.astype(np.float32)

    # Unit rows computed once, untimed and in chunks (a notebook keeps them); the timed
    # part is what scoring costs per model: one matrix-vector product, rescale and cut.
    for start in range(0, len(matrix), 100_000):
        block = matrix[start : start + 100_000]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    reset_peak()

    def numpy_scores() -> int:
        q = model.query.astype(np.float32)
        q /= np.linalg.norm(q)
        s = (matrix @ q - model.level_negative) / model.spread
        return int((s >= 0.5).sum())

    step("numpy", numpy_scores)
    db = result["steps"]["db threshold 2"]["s"]
    result["ratio_db_to_numpy"] = db / result["steps"]["numpy"]["s"]
    result["load_average_1m_at_end"] = os.getloadavg()[0]
    save()
    print(f"db / numpy: {result['ratio_db_to_numpy']:.1f}x; wrote {out_path}")
    if not args.keep:
        with psycopg.connect(to_libpq_url(args.database_url), autocommit=True) as admin:
            admin.execute(f'drop database "{urlsplit(url).path.lstrip("/")}" with (force)')


if __name__ == "__main__":
    main()
