"""Two publishes into different embedding spaces at once (issue 15, finding 9): how long the
second waits for the first.

``A`` publishes a new space (it builds the HNSW index: the merge lock exclusively, then
``CREATE INDEX`` holds a SHARE lock on ``embeddings`` until it commits). ``B`` publishes into a
space that already has its index (it builds nothing), started once A holds the merge lock
(from its first merge to its commit).
``B alone`` is the same publish with nothing else running. Before the fix B took the merge
lock shared and so waited for all of A (its merge, index build and commit); now B takes no
merge lock and only its embeddings insert can wait, for A's index build .. commit.

    nice -n 10 .venv/bin/python benchmarks/bench_publish_locks.py --rows-a 40000 --rows-b 2000

Writes ``benchmarks/results/publish_locks.json``; prints a table. Times are measured, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import bench_load  # noqa: E402
from shardgen import write_run  # noqa: E402

from embcat.catalog.publish import publish  # noqa: E402
from embcat.catalog.settings import DatabaseSettings  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "publish_locks.json"


def timed(run: Path, cid: str, settings: DatabaseSettings, out: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    result = publish(run, collection_id=cid, settings=settings, progress=False)
    out.update(
        start=t0, end=time.perf_counter(), elapsed_s=round(time.perf_counter() - t0, 2),
        index_built=result.index_built, index_s=round(result.index_s, 2),
    )  # fmt: skip


def wait_for_merge_lock(url: str) -> None:
    """Until a session holds the publish merge lock (A, at its first merge)."""
    with psycopg.connect(url, autocommit=True) as c:
        while not c.execute(
            "select exists (select 1 from pg_locks where locktype = 'advisory'"
            " and objsubid = 1 and granted and database = (select oid from pg_database"
            " where datname = current_database())"
            " and objid::bigint = (hashtext('embcat-publish-merge')::bigint & 4294967295))"
        ).fetchone()[0]:  # type: ignore[index]
            time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows-a", type=int, default=40_000, help="rows of the builder A")
    ap.add_argument("--rows-b", type=int, default=2_000, help="rows of B")
    ap.add_argument("--dims", type=int, default=64)
    args = ap.parse_args()
    name = f"embcat_locks_{uuid.uuid4().hex[:8]}"
    url = bench_load.create_database(name)
    settings = DatabaseSettings(database_url=url)
    results: dict[str, Any] = {
        "rows_a": args.rows_a,
        "rows_b": args.rows_b,
        "dims": args.dims,
        "load": os.getloadavg(),
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            run_a = write_run(work / "a", args.rows_a, dims=args.dims, seed=1, encoder="bench-a")
            run_b = write_run(work / "b", args.rows_b, dims=args.dims, seed=2, encoder="bench-b")
            publish(run_b, collection_id="b0", settings=settings, progress=False)  # its index
            alone: dict[str, Any] = {}
            timed(run_b, "b1", settings, alone)
            a: dict[str, Any] = {}
            b: dict[str, Any] = {}
            ta = threading.Thread(target=timed, args=(run_a, "a", settings, a))
            ta.start()
            wait_for_merge_lock(url)
            timed(run_b, "b2", settings, b)
            ta.join()
            results.update(
                b_alone_s=alone["elapsed_s"],
                a_s=a["elapsed_s"],
                a_index_s=a["index_s"],
                b_beside_a_s=b["elapsed_s"],
                b_ended_before_a=b["end"] < a["end"],
                load_end=os.getloadavg(),
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            )
    finally:
        bench_load.drop_database(name)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    for key, value in results.items():
        print(f"{key:<18} {value}")


if __name__ == "__main__":
    main()
