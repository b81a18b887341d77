"""Publish benchmark (issue 4): shards -> STAC items + vectors, side by side with the peer.

In one run, on the same server and the same rows:

* ours: ``catalog.publish.publish`` of N chips x D dims (shards + manifest written by
  tests/shardgen.py), HNSW build deferred and timed separately (``build_index``), then the
  same publish again (a no-op re-run);
* peer: ``pypgstac load items`` of the same STAC items without vectors into pgstac
  (separate virtualenv, dedicated database made as superuser);
* limit: a bare binary COPY of the same rows (item JSON + halfvec) into an unindexed table.

    nice -n 10 .venv/bin/python benchmarks/bench_publish.py [--n 100000] [--dims 768]

Needs ``/tmp/embcat-bench-publish-pgstac-venv`` with ``pypgstac[psycopg]`` (made if missing) and
``runuser -u postgres``. Prints a table, writes benchmarks/results/bench_publish.json and
never asserts a time. Peak RSS is that of the process doing the work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from benchcommon import in_child  # noqa: E402
from shardgen import write_run  # noqa: E402

from conftest import create_database, drop_database  # noqa: E402
from embcat.catalog.item_shape import item_dict  # noqa: E402
from embcat.catalog.settings import DatabaseSettings  # noqa: E402

CID = "bench-publish"
PGSTAC_VENV = Path("/tmp/embcat-bench-publish-pgstac-venv")  # our own: /tmp is shared
PGSTAC_DB = "embcat_bench_pgstac"
SOCKET_DSN = f"postgresql:///{PGSTAC_DB}?host=/var/run/postgresql"


def _child_publish(url: str, run: str, defer: bool, queue: Any) -> None:
    from embcat.catalog.publish import publish

    res = publish(
        Path(run),
        collection_id=CID,
        settings=DatabaseSettings(database_url=url),
        progress=False,
        defer_index=defer,
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({**res.as_dict(), "summary": res.summary(), "rss_mb": rss})


def _child_index(url: str, queue: Any) -> None:
    from embcat.catalog.publish import build_index

    t = time.perf_counter()
    built = build_index(CID, DatabaseSettings(database_url=url))
    queue.put({"built": built, "seconds": time.perf_counter() - t})


def superuser(sql: str, db: str = "postgres") -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", db,
         "-c", sql],
        check=True, capture_output=True, cwd="/tmp",
    )  # fmt: skip


def ensure_pgstac() -> str:
    exe = PGSTAC_VENV / "bin" / "pypgstac"
    if not exe.exists():
        # the system python: the postgres user must be able to run the venv (not /root/...)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(PGSTAC_VENV)], check=True)
        subprocess.run(
            [str(PGSTAC_VENV / "bin" / "pip"), "install", "-q", "pypgstac[psycopg]"], check=True
        )
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    superuser(f"DROP DATABASE IF EXISTS {PGSTAC_DB} WITH (FORCE)")
    superuser(f"CREATE DATABASE {PGSTAC_DB}")
    superuser("CREATE EXTENSION postgis; CREATE EXTENSION btree_gist; CREATE EXTENSION unaccent",
              PGSTAC_DB)  # fmt: skip
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(exe), "migrate", "--dsn", SOCKET_DSN],
        check=True, capture_output=True, cwd="/tmp",
    )  # fmt: skip
    return (version.stdout or version.stderr).strip()


def timed_postgres_cmd(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` as postgres under /usr/bin/time; (elapsed s, peak RSS MB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time", dir="/tmp") as tf:
        os.chmod(tf.name, 0o666)
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "/usr/bin/time", "-o", tf.name, "-f", "%e %M",
             *cmd],
            check=True, capture_output=True, cwd="/tmp",
        )  # fmt: skip
        elapsed, rss_kb = Path(tf.name).read_text().split()[-2:]
    return float(elapsed), int(rss_kb) / 1024


def export_items(url: str, folder: Path) -> tuple[Path, Path, int]:
    """The published items as STAC ndjson (vectors stay out) and the collection JSON."""
    items = folder / "items.ndjson"
    coll = folder / "collection.json"
    n = 0
    with psycopg.connect(url) as c, open(items, "wb") as f:
        stac = c.execute("select stac from collections where id = %s", (CID,)).fetchone()
        assert stac is not None
        coll.write_bytes(orjson.dumps(stac[0]))
        with c.cursor(name="items") as cur:
            cur.execute(
                "select id, ST_AsGeoJSON(geometry)::jsonb, bbox, properties, assets, links"
                " from items where collection_id = %s",
                (CID,),
            )
            for row in cur:
                f.write(orjson.dumps(item_dict(CID, *row)) + b"\n")
                n += 1
    for p in (folder, items, coll):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return items, coll, n


def bare_copy(url: str, folder: Path) -> dict[str, Any]:
    """COPY the same rows (item JSON + halfvec) in binary into an unindexed table."""
    dump = folder / "rows.bin"
    with psycopg.connect(url) as c:
        with open(dump, "wb") as f, c.cursor() as cur:
            with cur.copy(
                "COPY (select i.id, i.geometry, i.bbox, i.datetime, i.properties, i.assets,"
                " i.links, e.embedding from items i join embeddings e"
                " on e.collection_id = i.collection_id and e.item_id = i.id"
                f" where i.collection_id = '{CID}') TO STDOUT (FORMAT BINARY)"
            ) as copy:
                for block in copy:
                    f.write(block)
        c.execute(
            "create table bare_rows (id text, geometry geometry, bbox float8[],"
            " datetime timestamptz, properties jsonb, assets jsonb, links jsonb,"
            " embedding halfvec)"
        )
        c.commit()
        t = time.perf_counter()
        with c.cursor() as cur, open(dump, "rb") as f:
            with cur.copy("COPY bare_rows FROM STDIN (FORMAT BINARY)") as copy:
                while block := f.read(1 << 20):
                    copy.write(block)
        c.commit()
        seconds = time.perf_counter() - t
        rows = c.execute("select count(*) from bare_rows").fetchone()
    return {"seconds": seconds, "rows": rows[0] if rows else 0, "bytes": dump.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=768)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args()
    n, dims = args.n, args.dims
    work = Path(tempfile.mkdtemp(prefix="bench-publish-", dir="/tmp"))
    url = create_database("embcat_bench")
    out: dict[str, Any] = {"n": n, "dims": dims, "shards": args.shards}
    try:
        t = time.perf_counter()
        run = write_run(work / "run", n, dims=dims, seed=0, shards=args.shards,
                        encoder="bench", row_group_size=8192)  # fmt: skip
        out["generate_s"] = round(time.perf_counter() - t, 1)
        shard_bytes = sum(p.stat().st_size for p in run.glob("*.parquet"))
        ours = in_child(_child_publish, url, str(run), True)
        index = in_child(_child_index, url)
        again = in_child(_child_publish, url, str(run), True)
        out["ours"] = {
            "seconds": ours["elapsed_s"],
            "rows_per_s": n / ours["elapsed_s"],
            "mb_per_s": shard_bytes / 1e6 / ours["elapsed_s"],
            "shard_mb": shard_bytes / 1e6,
            "rss_mb": ours["rss_mb"],
            "timings": ours["timings"],
            "hnsw_build_s": index["seconds"],
            "rerun_noop_s": again["elapsed_s"],
            "rerun_inserted": again["inserted"],
        }
        items, coll, n_items = export_items(url, work)
        out["bare_copy"] = bare_copy(url, work)
        if not args.skip_peer:
            out["pgstac_version"] = ensure_pgstac()
            exe = str(PGSTAC_VENV / "bin" / "pypgstac")
            timed_postgres_cmd([exe, "load", "collections", str(coll), "--dsn", SOCKET_DSN,
                                "--method", "upsert"])  # fmt: skip
            seconds, rss = timed_postgres_cmd(
                [exe, "load", "items", str(items), "--dsn", SOCKET_DSN, "--method", "insert"]
            )
            out["peer"] = {"seconds": seconds, "rows_per_s": n_items / seconds, "rss_mb": rss,
                           "ndjson_mb": items.stat().st_size / 1e6}  # fmt: skip
    finally:
        drop_database(url)
        if not args.skip_peer:
            superuser(f"DROP DATABASE IF EXISTS {PGSTAC_DB} WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)

    o, b = out["ours"], out["bare_copy"]
    from embcat.catalog.store.spaces import IndexSettings

    graph = IndexSettings()
    rows = [
        ("embcat publish (items + vectors, index deferred)", o["seconds"], n / o["seconds"],
         o["mb_per_s"], o["rss_mb"]),
        (f"  HNSW build (m={graph.m}, ef_construction={graph.ef_construction})",
         o["hnsw_build_s"], n / o["hnsw_build_s"], None, None),
        ("  publish + HNSW build", o["seconds"] + o["hnsw_build_s"],
         n / (o["seconds"] + o["hnsw_build_s"]), None, None),
        ("  re-run of the same publish (no-op)", o["rerun_noop_s"], n / o["rerun_noop_s"],
         None, None),
        ("bare binary COPY, same rows, unindexed (limit)", b["seconds"], n / b["seconds"],
         b["bytes"] / 1e6 / b["seconds"], None),
    ]  # fmt: skip
    if "peer" in out:
        p = out["peer"]
        rows.append(("pypgstac load items, no vectors (peer)", p["seconds"], p["rows_per_s"],
                     p["ndjson_mb"] / p["seconds"], p["rss_mb"]))  # fmt: skip
        out["ratio_ours_vs_peer_items_per_s"] = (n / o["seconds"]) / p["rows_per_s"]
    print(f"\npublish {n:,} chips x {dims} dims ({o['shard_mb']:.0f} MB of shards)\n")
    print(f"{'what':52} {'seconds':>8} {'rows/s':>9} {'MB/s':>7} {'peak RSS MB':>12}")
    for name, s, r, mb, rss in rows:
        mbs = f"{mb:7.1f}" if mb is not None else f"{'':7}"
        rss_s = f"{rss:12.0f}" if rss is not None else f"{'':12}"
        print(f"{name:52} {s:8.1f} {r:9,.0f} {mbs} {rss_s}")
    print("\nour phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in o["timings"].items()))
    if "ratio_ours_vs_peer_items_per_s" in out:
        print(f"ours / peer items per second: {out['ratio_ours_vs_peer_items_per_s']:.2f}")
    dest = ROOT / "benchmarks" / "results" / "bench_publish.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
