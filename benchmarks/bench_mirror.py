"""Mirror benchmark (issue 18 item 4): ``embcat mirror`` between two catalogues over a
loopback API server (``embcat serve`` in its own process), next to ``embcat publish`` of
the same rows in the same run.

    nice -n 10 .venv/bin/python benchmarks/bench_mirror.py [--n 100000] [--dims 768]
        [--page-rows 5000] [--dtype float32] [--data isotropic|manifold] [--profile FILE]
        [--out benchmarks/results/bench_mirror.json]

``--data manifold``: encoder-like vectors (bench_scale's), so that the receiving space's
``auto`` kind is the binary one; shardgen's standard-normal vectors (the default) are
judged isotropic and get an HNSW graph over halfvec (30 minutes at 1M).

Catalogue A gets a ``tests/shardgen.py`` run through ``embcat publish`` (index deferred:
its rows/s is the load rate the mirror's load phase is compared with); an API server on
127.0.0.1 serves A; ``mirror()`` pulls the collection into catalogue B. Reported apart:
the load phase (export pages fetched, verified and binary-COPYed) and the index phase (the
space's index built once at the end), with the mirror's peak RSS (VmHWM of its child
process). Publish and mirror each run in a child process of their own. Prints a table and
writes JSON as it goes; never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # first: its conftest holds create_database

from bench_scale import vector_chunks  # noqa: E402
from benchcommon import in_child, rss_mb  # noqa: E402
from shardgen import write_run  # noqa: E402

from conftest import create_database, drop_database  # noqa: E402
from embcat.catalog.settings import DatabaseSettings  # noqa: E402

CID = "bench-mirror"


def _child_publish(url: str, run: str, queue: Any) -> None:
    from embcat.catalog.publish import publish

    res = publish(Path(run), collection_id=CID, settings=DatabaseSettings(database_url=url),
                  progress=False, defer_index=True)  # fmt: skip
    queue.put({"seconds": res.elapsed_s, "rows": res.rows, "rss_mb": rss_mb()})


def _serve(db_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """``embcat serve`` of catalogue A in a process of its own (the source server must not
    share the mirror's interpreter: both are Python-bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EMBCAT_DATABASE_URL": db_url}
    cmd = [sys.executable, "-m", "embcat.cli", "serve", "--host", "127.0.0.1", "--port",
           str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/exchange", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("embcat serve did not start")


def _child_mirror(
    a_url: str, b_url: str, page_rows: int, dtype: str, profile: str | None, queue: Any
) -> None:
    from embcat.catalog.mirror import MirrorOptions, mirror

    server, base_url = _serve(a_url)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    try:
        opts = MirrorOptions(base_url, CID, page_rows=page_rows, dtype=dtype)
        if prof is not None:
            prof.enable()
        t = time.perf_counter()
        r = mirror(opts, DatabaseSettings(database_url=b_url))
        total = time.perf_counter() - t
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
    finally:
        server.terminate()
        server.wait(timeout=30)
    queue.put({"rows": r.upserted, "bytes": r.bytes, "pages": r.pages, "seconds": total,
               "load_s": r.load_s, "index_s": r.index_s, "summary": r.summary(),
               "rss_mb": rss_mb()})  # fmt: skip


def manifold_mutate(n: int, dims: int, seed: int) -> Any:
    """A ``write_run`` hook that replaces each shard's vectors with the next rows of
    bench_scale's manifold data set (encoder-like: the receiving space's ``auto`` kind
    judges it binary-friendly, where shardgen's standard-normal vectors get HNSW over
    halfvec, a 30-minute build at 1M)."""
    chunks = vector_chunks("manifold", n, dims, seed)
    buf = np.empty((0, dims), np.float32)

    def mutate(rank: int, columns: dict[str, Any]) -> None:
        nonlocal buf
        need = len(columns["embedding"])
        while len(buf) < need:
            buf = np.concatenate([buf, next(chunks)])
        columns["embedding"] = buf[:need].astype(columns["embedding"].dtype)
        buf = buf[need:]

    return mutate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=768)
    ap.add_argument("--page-rows", type=int, default=10000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--data", choices=["isotropic", "manifold"], default="isotropic",
        help="the vectors: shardgen's standard normal, or bench_scale's manifold",
    )  # fmt: skip
    ap.add_argument("--profile", help="write a cProfile of the mirror to this file")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_mirror.json")
    args = ap.parse_args()
    n, dims = args.n, args.dims
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-", dir="/tmp"))
    a_url = create_database("embcat_bench")
    b_url = create_database("embcat_bench")
    results: dict[str, Any] = {
        "n": n, "dims": dims, "page_rows": args.page_rows, "dtype": args.dtype,
        "data": args.data, "load_average_before": os.getloadavg(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=2))

    try:
        mutate = manifold_mutate(n, dims, 7) if args.data == "manifold" else None
        run = write_run(work / "run", n, dims=dims, seed=0, shards=4, encoder="bench",
                        row_group_size=8192, mutate=mutate)  # fmt: skip
        results["publish"] = pub = in_child(_child_publish, a_url, str(run))
        pub["rows_s"] = n / pub["seconds"]
        shutil.rmtree(work / "run", ignore_errors=True)
        save()
        m = in_child(_child_mirror, a_url, b_url, args.page_rows, args.dtype, args.profile)
        m["rows_s"] = m["rows"] / m["seconds"]
        m["load_rows_s"] = m["rows"] / m["load_s"] if m["load_s"] else None
        m["load_vs_publish"] = m["load_rows_s"] / pub["rows_s"] if m["load_rows_s"] else None
        results["mirror"] = m
        results["load_average_after"] = os.getloadavg()
        save()
    finally:
        drop_database(a_url)
        drop_database(b_url)
        shutil.rmtree(work, ignore_errors=True)
    p, m = results["publish"], results["mirror"]
    print(f"\nMirror {n} x {dims} over loopback (pages of {args.page_rows}, {args.dtype}),"
          f" load average {results['load_average_before'][0]:.1f} ->"
          f" {results['load_average_after'][0]:.1f}")  # fmt: skip
    print(f"{'what':<36} {'s':>8} {'rows/s':>9} {'peak RSS MB':>12}")
    print(
        f"{'publish (index deferred)':<36} {p['seconds']:>8.1f} {p['rows_s']:>9.0f}"
        f" {p['rss_mb']:>12.0f}"
    )
    print(
        f"{'mirror, load phase':<36} {m['load_s']:>8.1f} {m['load_rows_s']:>9.0f}"
        f" {m['rss_mb']:>12.0f}   ({m['load_vs_publish']:.2f}x publish)"
    )
    print(f"{'mirror, index phase':<36} {m['index_s']:>8.1f}")
    print(f"{'mirror, end to end':<36} {m['seconds']:>8.1f} {m['rows_s']:>9.0f}")
    print(m["summary"])


if __name__ == "__main__":
    main()
