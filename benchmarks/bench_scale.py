"""Scale benchmark (issue 17): publish-to-searchable and similarity per index kind.

One run, one data set (``--data manifold``: tests/vectorgen.py's curved 32-d manifold, or
``mixture``: isotropic Gaussian clusters, the ANN worst case), N x D streamed in chunks:

1. shards + manifest written chunk by chunk (tests/shardgen.py's chip grid and columns,
   the vectors replaced by the data set's), never all in memory;
2. ``catalog.publish.publish`` in a child process (its peak RSS is the publisher's), which
   builds the space's default index kind: publish seconds split into load and index;
3. for each further kind: ``ensure_index(kind=...)`` (build s, index bytes per vector);
4. per kind: 50 item queries through ``catalog.similarity.similar_with_plan`` (the API's
   strategy, SQL path, with the API's filter object) and the STAC API (HTTP path),
   unfiltered, bbox 10 % / 1 % / 0.1 % and a datetime window of 1 %: p50 / p95 ms and
   recall@10 (mean, worst query) against an exact numpy scan over the float16-rounded
   vectors, in chunks.

    nohup nice -n 10 .venv/bin/python benchmarks/bench_scale.py --n 1000000 \
        > benchmarks/results/bench_scale_1m.log 2>&1 &

10M (refuses to start when the disk cannot hold the shards and the database, ~65 GB with
float16 shards; the grid runs in strips of 1M chips side by side, the datetime window
spans whole days holding 1 % of the chips):

    nohup nice -n 10 .venv/bin/python benchmarks/bench_scale.py --n 10000000 \
        --kinds ivfflat-bit --shard-dtype float16 > benchmarks/results/bench_scale_10m.log 2>&1 &

Writes ``benchmarks/results/scale_<data>_<n>.json`` after every step; never asserts a time.
``--paths sql,http``: the HTTP path posts the same queries to ``POST /search`` of a
uvicorn server of ``api.app:create_app`` (bench_similarity's ``start_server``).
``--keep`` keeps the database; ``--url`` runs the kinds and queries again on a kept one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow.parquet as pq
import shapely

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT), str(ROOT / "benchmarks")]

from benchcommon import in_child  # noqa: E402
from shardgen import chip_rows, table_from_rows  # noqa: E402

from conftest import create_database, drop_database  # noqa: E402
from embcat.catalog.settings import DatabaseSettings  # noqa: E402
from embcat.encoders.manifest import (  # noqa: E402
    EncoderIdentity,
    Manifest,
    RunParameters,
    ShardRecord,
    geo_metadata,
    sha256_file,
    shard_name,
)

CID = "bench-scale"
CHUNK = 50_000
K = 10
PER_ROW = 100  # shardgen's grid: 100 chips a row; a scene (one day) is 10,000 chips
BLOCK = 1_000_000  # chips per 64 km x 6,400 km strip; further strips lie side by side
SCENE = PER_ROW * PER_ROW
BASE_DAY = datetime(2024, 6, 1, 10, 30, tzinfo=UTC)


def vector_chunks(data: str, n: int, dims: int, seed: int) -> Iterator[np.ndarray]:
    """The data set in chunks of CHUNK rows (same network / centres throughout)."""
    rng = np.random.default_rng(seed)
    if data == "manifold":
        intrinsic, clusters, hidden = 32, 200, 128
        centres = rng.standard_normal((clusters, intrinsic)).astype(np.float32) * (3 / np.sqrt(2))
        w1 = rng.standard_normal((intrinsic, hidden)).astype(np.float32) / np.sqrt(5.5 * intrinsic)
        w2 = rng.standard_normal((hidden, dims)).astype(np.float32) / np.sqrt(hidden)
        scale = None
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            z = centres[rng.integers(0, clusters, m)] + rng.standard_normal(
                (m, intrinsic), dtype=np.float32
            )
            signal = np.tanh(z @ w1) @ w2
            scale = scale or float(signal.std())
            yield signal + rng.standard_normal(signal.shape, dtype=np.float32) * (0.1 * scale)
    else:
        centres = rng.standard_normal((50, dims)).astype(np.float32)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            labels = rng.integers(0, 50, m)
            yield centres[labels] + rng.standard_normal((m, dims), dtype=np.float32) * 0.35


def grid(start: int, count: int, seed: int) -> dict[str, Any]:
    """The chips' item columns (shardgen's grid, in strips of BLOCK chips)."""
    return chip_rows(start, count, 1, seed, per_row=PER_ROW, block_rows=BLOCK)


def disk_estimate(n: int, dims: int, dtype: str) -> int:
    """Bytes a run needs: its shards plus the database's 4,511 B per 768-d row (items with
    their indexes, the embedding rows, the index: the 1M run of 2026-12-01), and 10 %."""
    width = 2 if dtype == "float16" else 4
    return int(1.1 * n * (dims * width + 400 + 4_511 * dims / 768))


def write_shards(
    folder: Path, data: str, n: int, dims: int, seed: int, dtype: str = "float32"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shards = max(1, n // 250_000)
    per = -(-n // shards)
    records = []
    chunks = vector_chunks(data, n, dims, seed)
    for rank in range(shards):
        path = folder / shard_name(rank, shards)
        writer = None
        start, stop = rank * per, min(n, (rank + 1) * per)
        rows = 0
        for lo in range(start, stop, CHUNK):
            cols = grid(lo, min(CHUNK, stop - lo), seed)
            cols["embedding"] = next(chunks)
            table = table_from_rows(cols, dims, dtype)
            if writer is None:
                meta = dict(table.schema.metadata or {})
                meta[b"geo"] = json.dumps(geo_metadata()).encode()
                writer = pq.ParquetWriter(path, table.schema.with_metadata(meta))
            writer.write_table(table, row_group_size=10_000)
            rows += table.num_rows
        assert writer is not None
        writer.close()
        records.append(
            ShardRecord(
                path=path.name,
                rank=rank,
                rows=rows,
                bytes=path.stat().st_size,
                sha256=sha256_file(path),
            )  # fmt: skip
        )
    Manifest(
        created=datetime(2024, 6, 2, 12, 0, tzinfo=UTC),
        encoder=EncoderIdentity(
            name=f"bench-scale-{data}",
            version="1",
            dimensions=dims,
            dtype=dtype,
            bands=["B04", "B03", "B02"],
            chip_size=64,
            gsd=10.0,
            mlm={
                "mlm:name": "bench",
                "mlm:architecture": "synthetic",
                "mlm:tasks": ["similarity-search"],
                "mlm:framework": "pytorch",
                "mlm:input": [],
                "mlm:output": [],
            },
        ),  # fmt: skip
        run=RunParameters(
            chip_size=64,
            stride=64,
            bands=["B04", "B03", "B02"],
            grid_id="EPSG:32633/64/64",
            world_size=shards,
            batch_size=32,
            inputs=["/data/scene-000.tif"],
        ),  # fmt: skip
        software={"embcat": "0.1.0"},
        shards=records,
        rows=n,
        source_bytes=n * 64 * 64 * 3 * 2,
    ).dump(folder)


def _child_publish(url: str, run: str, queue: Any) -> None:
    from embcat.catalog.publish import publish

    res = publish(
        Path(run), collection_id=CID, settings=DatabaseSettings(database_url=url), progress=False
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({**res.as_dict(), "summary": res.summary(), "rss_mb": rss})


def filters(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Unfiltered, bbox 10 / 1 / 0.1 % of the grid (a band of rows, half the columns) and
    a window of whole days holding 1 % of the chips (one day at 1M, ten at 10M). Masks are
    computed later, chunk by chunk."""
    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    grid_rows = min(n, BLOCK) // PER_ROW
    half = max(1, (-(-n // BLOCK) * PER_ROW) // 2)  # half the columns of every strip
    out: list[dict[str, Any]] = [{"name": "none"}]
    for sel in (0.10, 0.01, 0.001):
        band = max(1, round(2 * sel * grid_rows))
        r0 = int(rng.integers(0, grid_rows - band))
        # chip (col, row) covers x0 = 500000 + col*640, y1 = 5400000 - row*640
        x0, x1 = 500_000.0 + 0.5 * 640, 500_000.0 + (half - 0.5) * 640  # centres
        y1, y0 = 5_400_000.0 - (r0 + 0.5) * 640, 5_400_000.0 - (r0 + band - 0.5) * 640
        lon, lat = to_wgs84.transform([x0, x1, x1, x0], [y0, y0, y1, y1])
        box = (min(lon), min(lat), max(lon), max(lat))
        out.append({"name": f"bbox {sel:.1%}", "box": box})
    days = max(1, round(0.01 * n / SCENE))
    day = int(rng.integers(0, max(1, n // SCENE - days + 1)))
    out.append({"name": "datetime 1%", "day": day, "days": days})
    return out


def masks_and_truth(
    data: str, n: int, dims: int, seed: int, rows: list[int], flts: list[dict[str, Any]]
) -> list[list[list[int]]]:
    """Exact top-K row numbers per filter and query (cosine on float16-rounded vectors)."""
    queries = np.zeros((len(rows), dims))
    offset = 0
    for block in vector_chunks(data, n, dims, seed):  # pass 1: the query vectors
        for qi, r in enumerate(rows):
            if offset <= r < offset + len(block):
                queries[qi] = block[r - offset].astype(np.float16)
        offset += len(block)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_d = [np.full((len(rows), 0), np.inf) for _ in flts]
    best_i = [np.zeros((len(rows), 0), dtype=np.int64) for _ in flts]
    offset = 0
    boxes = [shapely.box(*f["box"]) if "box" in f else None for f in flts]
    for block in vector_chunks(data, n, dims, seed):
        m = len(block)
        v = block.astype(np.float16).astype(np.float64)
        d = 1 - qn @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T  # (Q, m)
        idx = np.arange(offset, offset + m)
        for qi, r in enumerate(rows):
            if offset <= r < offset + m:
                d[qi, r - offset] = np.inf  # the query item is left out
        cols = grid(offset, m, seed)
        geoms = shapely.from_wkb(np.asarray(cols["geometry"], dtype=object))
        for fi, f in enumerate(flts):
            dd = d.copy()
            if boxes[fi] is not None:
                dd[:, ~shapely.intersects(geoms, boxes[fi])] = np.inf
            if "day" in f:
                scene = idx // SCENE
                dd[:, (scene < f["day"]) | (scene >= f["day"] + f["days"])] = np.inf
            cat_d = np.concatenate([best_d[fi], dd], axis=1)
            cat_i = np.concatenate([best_i[fi], np.broadcast_to(idx, dd.shape)], axis=1)
            top = np.argsort(cat_d, axis=1, kind="stable")[:, :K]
            best_d[fi] = np.take_along_axis(cat_d, top, axis=1)
            best_i[fi] = np.take_along_axis(cat_i, top, axis=1)
        offset += m
    return [
        [[int(i) for i, dv in zip(bi[q], bd[q], strict=True) if np.isfinite(dv)]
         for q in range(len(rows))]
        for bi, bd in zip(best_i, best_d, strict=True)
    ]  # fmt: skip


def run_queries(
    url: str,
    rows: list[int],
    flts: list[dict[str, Any]],
    truth: list[list[list[int]]],
    path: str = "sql",
    base: str | None = None,
    probes: int | None = None,
    exact: bool = False,
) -> list[dict[str, Any]]:
    """The queries through ``path``: ``sql`` (catalog.similarity on one connection) or
    ``http`` (POST /search of the API at ``base``, one keep-alive client)."""
    import httpx
    from pgvector.psycopg import register_vector

    from embcat.catalog.filters import Filter
    from embcat.catalog.search import SearchQuery
    from embcat.catalog.similarity import SimilaritySettings, SimilaritySpec, similar_with_plan

    # --probes means exactly that many (the share-of-lists rule off)
    settings = (
        SimilaritySettings(ivfflat_probes=probes, ivfflat_probes_fraction=0) if probes else None
    )

    out = []
    http = httpx.Client()
    with psycopg.connect(url, autocommit=True) as c:
        register_vector(c)
        for fi, f in enumerate(flts):
            body: dict[str, Any] = {"collections": [CID], "limit": K}
            if "box" in f:
                body["bbox"] = list(f["box"])
            if "day" in f:
                lo = BASE_DAY + timedelta(days=f["day"])
                hi = lo + timedelta(days=f["days"] - 1, hours=1)
                body["datetime"] = f"{lo.isoformat()}/{hi.isoformat()}".replace("+00:00", "Z")
            # The API's filter (catalog.filters): bbox and datetime on the embedding rows.
            where = Filter.from_search(
                SearchQuery(
                    collections=body["collections"],
                    bbox=body.get("bbox"),
                    datetime=body.get("datetime"),
                )
            )
            times, recalls, strategies = [], [], {}
            for qi, r in enumerate(rows):
                item: dict[str, Any] = {"item": {"collection": CID, "id": f"chip-{r:08d}"}}
                if exact and f["name"] != "none":
                    item["exact"] = True
                spec = SimilaritySpec.model_validate(item)
                for attempt in range(2):  # the first call warms the plan and the cache
                    t = time.perf_counter()
                    if path == "sql":
                        hits, plan = similar_with_plan(c, spec, where, K, settings=settings)
                        got = {h.item_id for h in hits}
                        strategy = plan.strategy
                    else:
                        resp = http.post(f"{base}/search", json={**body, "similarity": item})
                        resp.raise_for_status()
                        got = {feat["id"] for feat in resp.json()["features"]}
                        strategy = "http"
                    elapsed = time.perf_counter() - t
                    if attempt == 0 and qi > 0:
                        break
                times.append(elapsed * 1000)
                strategies[strategy] = strategies.get(strategy, 0) + 1
                want = {f"chip-{i:08d}" for i in truth[fi][qi]}
                recalls.append(len(want & got) / len(want) if want else 1.0)
            out.append({
                "path": path, "filter": f["name"], "p50_ms": float(np.percentile(times, 50)),
                "p95_ms": float(np.percentile(times, 95)), "recall": float(np.mean(recalls)),
                "worst": float(np.min(recalls)), "strategies": strategies,
            })  # fmt: skip
            print(json.dumps(out[-1]), flush=True)
    http.close()
    return out


def index_bytes(url: str) -> dict[str, int]:
    with psycopg.connect(url) as c:
        # embeddings is partitioned by space (migration 0021): its partitions' indexes
        parts = "(select inhrelid from pg_inherits where inhparent = 'embeddings'::regclass)"
        rows = c.execute(
            "select c.relname, pg_relation_size(c.oid) from pg_index x"
            " join pg_class c on c.oid = x.indexrelid"
            f" where x.indrelid = 'embeddings'::regclass or x.indrelid in {parts}"
        ).fetchall()
        total = c.execute(
            f"select (select coalesce(sum(pg_total_relation_size(p)), 0) from {parts} t(p))"
            " + pg_total_relation_size('items')"
        ).fetchone()
    return {**{r[0]: int(r[1]) for r in rows}, "_tables_total": int(total[0]) if total else 0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dims", type=int, default=768)
    p.add_argument("--data", choices=["manifold", "mixture"], default="manifold")
    p.add_argument("--kinds", default="ivfflat-bit,hnsw-bit,hnsw-halfvec")
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--shard-dtype", choices=["float32", "float16"], default="float32",
        help="dtype of the generated shards (float16 halves their disk; 10M: ~15 GB)",
    )  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("/tmp/embcat-bench-scale"))
    p.add_argument("--keep", action="store_true", help="keep the database afterwards")
    p.add_argument("--paths", default="sql,http", help="sql and/or http")
    p.add_argument(
        "--publish-only", action="store_true", help="stop after the publish (phase timings)"
    )
    p.add_argument(
        "--shards-only", action="store_true",
        help="write the shards (reused by a later run with the same --work) and stop",
    )  # fmt: skip
    p.add_argument(
        "--url", default=None, help="a database a --keep run left (skips shards and publish)"
    )
    p.add_argument(
        "--probes", type=int, default=None,
        help="ivfflat.probes for the queries (SQL and the HTTP server; default: the setting's)",
    )  # fmt: skip
    p.add_argument(
        "--exact", action="store_true", help="the filtered queries ask for the exact answer"
    )
    p.add_argument("--tag", default="", help="suffix of the JSON's name (keeps earlier runs')")
    a = p.parse_args()
    suffix = "_shards" if a.shards_only else "_publish" if a.publish_only else ""
    suffix += f"_{a.tag}" if a.tag else ""
    suffix += "_exact" if a.exact else ""
    if a.probes:
        suffix += f"_probes{a.probes}"
        os.environ["EMBCAT_SIMILARITY_IVFFLAT_PROBES"] = str(a.probes)  # the HTTP server's
        os.environ["EMBCAT_SIMILARITY_IVFFLAT_PROBES_FRACTION"] = "0"
    out_path = ROOT / "benchmarks" / "results" / f"scale_{a.data}_{a.n}{suffix}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "n": a.n, "dims": a.dims, "data": a.data, "started": time.time(),
        "load_average_at_start": os.getloadavg(),
    }  # fmt: skip

    def save() -> None:
        out_path.write_text(json.dumps(result, indent=2, default=str))

    run = a.work / f"{a.data}_{a.n}"
    t = time.perf_counter()
    if a.url is None and not (run / "manifest.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        need, free = disk_estimate(a.n, a.dims, a.shard_dtype), shutil.disk_usage(ROOT).free
        result["disk"] = {"estimate_bytes": need, "free_bytes": free}
        if need > free:
            save()
            raise SystemExit(
                f"this run needs about {need / 1e9:.0f} GB of disk and {free / 1e9:.0f} GB"
                " are free: free some (old benchmark databases, worktrees) or use --shard-dtype"
                " float16"
            )
        write_shards(run, a.data, a.n, a.dims, a.seed, a.shard_dtype)
    result["shards_s"] = time.perf_counter() - t
    save()
    if a.shards_only:
        return
    url = a.url or create_database(f"bench_scale_{a.data}_{a.n}")
    server = None
    try:
        if a.url is None:
            pub = in_child(_child_publish, url, str(run))
        else:  # the record of the kept run's publish
            with psycopg.connect(url) as c:
                rec = c.execute(
                    "select details from publishes where collection_id = %s order by id desc",
                    (CID,),
                ).fetchone()
            assert rec is not None, "no publish of the benchmark collection in --url"
            pub = {**rec[0], "summary": "(kept database)", "rss_mb": None}
        result["publish"] = pub
        result["kinds"] = {}
        kinds = a.kinds.split(",")
        result["publish_summary"] = pub["summary"]
        print(pub["summary"], "rss", pub["rss_mb"], flush=True)
        print("timings", json.dumps(pub.get("timings")), flush=True)
        result["load_average_after_publish"] = os.getloadavg()
        save()
        if a.publish_only:
            return
        rng = np.random.default_rng(a.seed + 1)
        rows = sorted(int(r) for r in rng.choice(a.n, a.queries, replace=False))
        flts = filters(a.n, rng)
        t = time.perf_counter()
        # the exact answers are kept beside the shards (11 minutes at 10M): a --url run of
        # the same data, seed and queries reads them back
        cached = run / f"truth_{a.seed}_{a.queries}.json"
        if cached.exists():
            truth = json.loads(cached.read_text())
        else:
            truth = masks_and_truth(a.data, a.n, a.dims, a.seed, rows, flts)
            run.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(truth))
        result["truth_s"] = time.perf_counter() - t
        save()
        from embcat.catalog.store.space_index import ensure_index, finish_swap
        from embcat.catalog.store.spaces import get_space

        with psycopg.connect(url) as c:
            space = get_space(c, pub["space_id"])
        for kind in kinds:
            entry: dict[str, Any] = {}
            if kind != space.index_kind or not pub["index_built"]:
                with psycopg.connect(url) as c:
                    c.execute("set statement_timeout = 0")
                    t = time.perf_counter()
                    ensure_index(c, space, kind=kind, drop_old=False)  # type: ignore[arg-type]
                    c.commit()
                    entry["build_s"] = time.perf_counter() - t
                    c.autocommit = True
                    finish_swap(c, space.id)
                    space = get_space(c, space.id)
            else:
                entry["build_s"] = pub["index_s"]
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("vacuum analyze embeddings")
            sizes = index_bytes(url)
            entry["index_bytes"] = sizes.get(space.index_name, 0)
            entry["index_bytes_per_vector"] = entry["index_bytes"] / a.n
            entry["disk_bytes_per_vector"] = sizes["_tables_total"] / a.n
            result["kinds"][kind] = entry
            save()
            print(kind, json.dumps(entry), flush=True)
            entry["queries"] = []
            for path in a.paths.split(","):
                base = None
                if path == "http":
                    if server is None:
                        from bench_similarity import start_server

                        server = start_server(url)
                    if server is None:
                        print("http: the API could not start; HTTP path skipped", flush=True)
                        continue
                    base = server[1]
                entry["queries"] += run_queries(
                    url, rows, flts, truth, path, base, a.probes, a.exact
                )
                save()
    finally:
        if server is not None:
            server[0].terminate()
        result["finished"] = time.time()
        result["load_average_at_end"] = os.getloadavg()
        save()
        if not a.keep and a.url is None:
            drop_database(url)


if __name__ == "__main__":
    main()
