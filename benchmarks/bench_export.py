"""Exchange benchmark (issues 6, 18): export throughput, bytes per embedding and peak RSS
in each dtype and profile, side by side with two limits measured in the same run on the
same rows: ``COPY (SELECT id, geometry, datetime, embedding ...) TO STDOUT (FORMAT
binary)`` (what the database hands out) and writing the same vectors as ``.npy``; then a
mirror between two catalogues over a loopback API server (load phase and index phase
apart) next to ``embcat publish`` of the same rows.

    nice -n 10 .venv/bin/python benchmarks/bench_export.py [--n 100000] [--dims 768]
        [--profiles full:float16,full:float16:list,...] [--skip-mirror] [--skip-csv]
        [--out benchmarks/results/bench_export.json]

A profile is ``columns:dtype[:vector_layout]`` (layout ``bytes``, the default, or ``list``).

The rows are a publish run from ``tests/shardgen.py`` (the items ``embcat publish``
writes), published into a throwaway database cloned from the template. Each export and
the mirror run in a child process of their own, so each peak RSS is that job's alone.
Prints a table and writes JSON as it goes; never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # first: its conftest holds create_database

from benchcommon import in_child, rss_mb  # noqa: E402
from shardgen import write_run  # noqa: E402

from conftest import create_database, drop_database  # noqa: E402
from embcat.catalog.settings import DatabaseSettings  # noqa: E402

CID = "bench-export"
PROFILES = [
    "full:float32",
    "full:float16",
    "full:float16:list",
    "full:int8",
    "full:binary",
    "minimal:float32",
    "minimal:float16",
    "minimal:float16:list",
    "minimal:int8",
    "minimal:binary",
]
PAYLOAD = {"float32": 4.0, "float16": 2.0, "int8": 1.0, "binary": 1 / 8}  # bytes per dim


def _child_publish(url: str, run: str, queue: Any) -> None:
    from embcat.catalog.publish import publish

    res = publish(Path(run), collection_id=CID, settings=DatabaseSettings(database_url=url),
                  progress=False, defer_index=True)  # fmt: skip
    queue.put({"seconds": res.elapsed_s, "rss_mb": rss_mb()})


def _child_export(url: str, columns: str, dtype: str, layout: str, path: str, queue: Any) -> None:
    from embcat.catalog.db import connect
    from embcat.catalog.export import ExportRequest, export_to_file

    req = ExportRequest(CID, dtype=dtype, columns=columns, batch_size=4096, vector_layout=layout)
    with connect(DatabaseSettings(database_url=url)) as conn:
        s = export_to_file(conn, req, Path(path))
    Path(path).unlink()
    queue.put({"seconds": s.seconds, "bytes": s.bytes, "rows": s.rows, "rss_mb": rss_mb()})


def _child_csv(url: str, path: str, queue: Any) -> None:
    from embcat.catalog.db import connect
    from embcat.catalog.export import ExportRequest, export_csv_to_file

    with connect(DatabaseSettings(database_url=url)) as conn:
        s = export_csv_to_file(conn, ExportRequest(CID, batch_size=4096), Path(path))
    Path(path).unlink()
    queue.put({"seconds": s.seconds, "bytes": s.bytes, "rows": s.rows, "rss_mb": rss_mb()})


def _child_limits(url: str, dims: int, path: str, npy: bool, queue: Any) -> None:
    """Binary COPY out of the same rows (bytes counted, not kept), then .npy writes."""
    import psycopg

    out: dict[str, Any] = {}
    query = (
        "COPY (SELECT i.id, i.geometry, i.datetime, e.embedding FROM items i JOIN embeddings e"
        " ON e.collection_id = i.collection_id AND e.item_id = i.id"
        f" WHERE i.collection_id = '{CID}') TO STDOUT (FORMAT binary)"
    )
    with psycopg.connect(url) as c:
        t = time.perf_counter()
        nbytes = 0
        with c.cursor().copy(query) as cp:
            for chunk in cp:
                nbytes += len(chunk)
        out["copy"] = {"seconds": time.perf_counter() - t, "bytes": nbytes}
        if not npy:
            queue.put(out)
            return
        # the vectors for the .npy limit (read as halfvec binary, not timed)
        raw = bytearray()
        with c.cursor().copy(
            "COPY (SELECT halfvec_send(embedding) FROM embeddings"
            f" WHERE collection_id = '{CID}' ORDER BY item_id) TO STDOUT (FORMAT binary)"
        ) as cp:
            cp.set_types(["bytea"])
            for (v,) in cp.rows():
                raw += v
    rec = np.dtype([("h", ">u4"), ("v", ">f2", (dims,))])
    half = np.frombuffer(raw, rec)["v"].astype("<f2")
    del raw  # (no copy of the COPY bytes: frombuffer reads the bytearray in place)
    for dtype, arr in (("float16", half), ("float32", half.astype(np.float32))):
        t = time.perf_counter()
        np.save(path, arr)
        secs = time.perf_counter() - t
        out[f"npy_{dtype}"] = {"seconds": secs, "bytes": Path(path).stat().st_size}
        Path(path).unlink()
    queue.put(out)


def _child_mirror(a_url: str, b_url: str, queue: Any) -> None:
    from helpers_server import start_server

    from embcat.api.settings import ApiSettings
    from embcat.catalog.mirror import MirrorOptions, MirrorResult, mirror

    handle = start_server(ApiSettings(database_url=a_url, db_pool_max=4))
    marks: list[float] = []

    def on_page(_r: MirrorResult) -> None:
        marks.append(time.perf_counter())

    try:
        t = time.perf_counter()
        r = mirror(MirrorOptions(handle.base_url, CID, page_rows=5000),
                   DatabaseSettings(database_url=b_url), on_page=on_page)  # fmt: skip
        total = time.perf_counter() - t
    finally:
        handle.stop()
    # the initial phase's last page commits just before the index build; the incremental
    # phase afterwards is one empty change-feed request
    load = (marks[-1] - t) if marks else total
    queue.put({"rows": r.upserted, "bytes": r.bytes, "seconds": total, "load_s": load,
               "index_s": total - load, "rss_mb": rss_mb()})  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=768)
    ap.add_argument("--skip-mirror", action="store_true")
    ap.add_argument("--skip-csv", action="store_true")
    ap.add_argument(
        "--profiles",
        default=",".join(PROFILES),
        help="comma-separated columns:dtype[:layout] (default: all ten)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_export.json")
    args = ap.parse_args()
    n, dims = args.n, args.dims
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir="/tmp"))
    a_url = create_database("embcat_bench")
    b_url = create_database("embcat_bench") if not args.skip_mirror else None
    results: dict[str, Any] = {"n": n, "dims": dims, "exports": [], "mirror": None}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=2))

    try:
        run = write_run(work / "run", n, dims=dims, seed=0, shards=4, encoder="bench",
                        row_group_size=8192)  # fmt: skip
        results["publish"] = pub = in_child(_child_publish, a_url, str(run))
        pub["rows_s"] = n / pub["seconds"]
        shutil.rmtree(work / "run", ignore_errors=True)
        save()
        lim = in_child(_child_limits, a_url, dims, str(work / "limit.npy"), True)
        results["limits"] = lim
        for what, key in (("binary COPY out (limit)", "copy"),
                          ("float32 .npy (limit)", "npy_float32"),
                          ("float16 .npy (limit)", "npy_float16")):  # fmt: skip
            results["exports"].append(
                {"what": what, **lim[key], "rss_mb": None, "load_avg": os.getloadavg()[0]}
            )
        save()
        for spec in args.profiles.split(","):
            columns, dtype, *rest = spec.split(":")
            layout = rest[0] if rest else "bytes"
            e = in_child(_child_export, a_url, columns, dtype, layout, str(work / "x.parquet"))
            what = f"export {columns} {dtype}" + (" (list)" if layout == "list" else "")
            e["payload_x"] = round(e["bytes"] / n / (PAYLOAD[dtype] * dims), 3)
            results["exports"].append({"what": what, "load_avg": os.getloadavg()[0], **e})
            save()
        again = in_child(_child_limits, a_url, dims, str(work / "limit.npy"), False)["copy"]
        results["exports"].append({"what": "binary COPY out (limit, again)", **again,
                                   "rss_mb": None, "load_avg": os.getloadavg()[0]})  # fmt: skip
        if not args.skip_csv:
            e = in_child(_child_csv, a_url, str(work / "x.csv"))
            results["exports"].append({"what": "export NeuCo-Bench CSV", **e})
        copy_rate = n / lim["copy"]["seconds"]
        for e in results["exports"]:
            e["emb_s"] = round(n / e["seconds"])
            e["MB_s"] = round(e["bytes"] / 1e6 / e["seconds"], 1)
            e["bytes_per_embedding"] = round(e["bytes"] / n, 1)
            e["vs_copy_out"] = round(e["emb_s"] / copy_rate, 3)
            e["seconds"] = round(e["seconds"], 2)
        save()
        if b_url is not None:
            m = in_child(_child_mirror, a_url, b_url)
            m["load_rows_s"] = m["rows"] / m["load_s"]
            m["vs_publish"] = m["load_rows_s"] / pub["rows_s"]
            results["mirror"] = m
            save()
    finally:
        drop_database(a_url)
        if b_url is not None:
            drop_database(b_url)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nExport {n} x {dims} (halfvec storage, publish-style items), one run")
    print(f"{'what':<32} {'MB':>8} {'s':>7} {'MB/s':>7} {'emb/s':>9} {'B/emb':>8} "
          f"{'xpay':>6} {'xCOPY':>6} {'RSS MB':>7} {'load':>5}")  # fmt: skip
    for e in results["exports"]:
        rss = f"{e['rss_mb']:.0f}" if e.get("rss_mb") else ""
        pay = f"{e['payload_x']:.3f}" if e.get("payload_x") else ""
        load = f"{e['load_avg']:.1f}" if e.get("load_avg") else ""
        print(f"{e['what']:<32} {e['bytes'] / 1e6:>8.1f} {e['seconds']:>7.2f} {e['MB_s']:>7.1f}"
              f" {e['emb_s']:>9} {e['bytes_per_embedding']:>8} {pay:>6} {e['vs_copy_out']:>6.2f}"
              f" {rss:>7} {load:>5}")  # fmt: skip
    p = results["publish"]
    print(f"publish (index deferred): {p['seconds']:.1f} s, {p['rows_s']:.0f} rows/s")
    m = results["mirror"]
    if m:
        print(f"mirror: {m['rows']} rows, {m['bytes'] / 1e6:.1f} MB; load {m['load_s']:.1f} s"
              f" ({m['load_rows_s']:.0f} rows/s, {m['vs_publish']:.2f}x publish), index"
              f" {m['index_s']:.1f} s, peak RSS {m['rss_mb']:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
