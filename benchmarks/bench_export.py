"""Exchange benchmark (issue 6): export throughput and bytes per embedding in each dtype,
side by side with writing the same vectors as a plain float32 ``.npy`` file (the limit);
mirror throughput over loopback; peak RSS.

    nice -n 10 .venv/bin/python benchmarks/bench_export.py [--n 100000] [--dims 768]

Prints a table and writes benchmarks/results/bench_export.json. Uses throwaway databases
cloned from the template (needs the provisioned PostgreSQL), never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers_server import start_server  # noqa: E402
from vectorgen import clustered_vectors, load_collection  # noqa: E402

from catalog.export import ExportRequest, export_to_file  # noqa: E402
from catalog.mirror import MirrorOptions, mirror  # noqa: E402
from catalog.settings import DatabaseSettings  # noqa: E402
from conftest import create_database, drop_database  # noqa: E402

CID = "bench-export"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=768)
    ap.add_argument("--mirror-n", type=int, default=None, help="rows mirrored (default: n)")
    args = ap.parse_args()
    n, dims = args.n, args.dims
    a_url = create_database("embcat_bench")
    b_url = create_database("embcat_bench")
    results: dict = {"n": n, "dims": dims, "exports": [], "mirror": None}
    try:
        vectors = clustered_vectors(n, dims, seed=0)
        t = time.perf_counter()
        with psycopg.connect(a_url) as c:
            register_vector(c)
            load_collection(c, CID, vectors, encoder_name="bench", build_index=False)
        results["load_s"] = round(time.perf_counter() - t, 1)
        stored = vectors.astype(np.float16).astype(np.float32)
        del vectors
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "limit.npy"
            t = time.perf_counter()
            np.save(path, stored)
            secs = time.perf_counter() - t
            size = path.stat().st_size
            results["exports"].append(
                {"what": "float32 .npy (limit)", "bytes": size, "seconds": secs}
            )
            path.unlink()
            a = DatabaseSettings(database_url=a_url)
            from catalog.db import connect

            for dtype in ("float32", "float16", "int8", "binary"):
                out = Path(tmp) / f"x-{dtype}.parquet"
                with connect(a) as conn:
                    s = export_to_file(conn, ExportRequest(CID, dtype=dtype, batch_size=4096), out)
                results["exports"].append(
                    {"what": f"export {dtype}", "bytes": s.bytes, "seconds": s.seconds}
                )
                out.unlink()
        del stored
        for e in results["exports"]:
            e["MB_s"] = round(e["bytes"] / 1e6 / e["seconds"], 1)
            e["emb_s"] = round(n / e["seconds"])
            e["bytes_per_embedding"] = round(e["bytes"] / n, 1)
            e["seconds"] = round(e["seconds"], 2)
        from api.settings import ApiSettings

        handle = start_server(ApiSettings(database_url=a_url, db_pool_max=4))
        try:
            t = time.perf_counter()
            r = mirror(
                MirrorOptions(handle.base_url, CID, page_rows=5000, progress=False),
                DatabaseSettings(database_url=b_url),
            )
            secs = time.perf_counter() - t
        finally:
            handle.stop()
        results["mirror"] = {
            "rows": r.upserted,
            "bytes": r.bytes,
            "seconds": round(secs, 1),
            "rows_s": round(r.upserted / secs),
            "MB_s": round(r.bytes / 1e6 / secs, 1),
            "note": "float32 over loopback, pages of 5000 rows, includes the HNSW build",
        }
        results["peak_rss_mb"] = round(rss_mb())
    finally:
        drop_database(a_url)
        drop_database(b_url)
    print(f"\nExport {n} x {dims} (halfvec storage), one run, peak RSS {results['peak_rss_mb']} MB")
    print(f"{'what':<24} {'MB':>9} {'s':>7} {'MB/s':>8} {'emb/s':>9} {'B/emb':>8}")
    for e in results["exports"]:
        print(
            f"{e['what']:<24} {e['bytes'] / 1e6:>9.1f} {e['seconds']:>7.2f} {e['MB_s']:>8.1f}"
            f" {e['emb_s']:>9} {e['bytes_per_embedding']:>8}"
        )
    m = results["mirror"]
    print(
        f"mirror: {m['rows']} rows, {m['bytes'] / 1e6:.1f} MB in {m['seconds']} s"
        f" ({m['rows_s']} rows/s, {m['MB_s']} MB/s)"
    )
    out_path = ROOT / "benchmarks" / "results" / "bench_export.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
