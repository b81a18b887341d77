"""Datetime-filtered similarity (issue 17): the embedding rows' own datetime vs the items join.

On a database ``bench_scale.py --keep`` left (``--url``), the same item queries under the
same 1 % datetime window (one scene day) run three ways, interleaved query by query so
that the first two see the same machine noise:

- ``rows``: the API's filter (``catalog.filters.Filter``): the window on ``embeddings e``
  (migration 0026's copy), no join;
- ``join``: the window on ``items i`` (what the API did before 0026): joined per row;
- ``rows, no index``: as ``rows`` with ``embeddings_datetime_idx`` dropped inside the
  transaction (rolled back afterwards): what the index buys the exact strategy.

Also the index's cost: its size on the space's partition and the time to build it there
(what a first publish's ATTACH pays for it; rolled back). Prints a table, writes
``benchmarks/results/datetime_<n>.json``; never asserts a time.

    nice -n 10 .venv/bin/python benchmarks/bench_datetime.py --url postgresql://.../bench_scale_...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from embcat.catalog.filters import ITEMS, Filter, interval_clause  # noqa: E402
from embcat.catalog.search import SearchQuery, parse_interval  # noqa: E402
from embcat.catalog.similarity import SimilaritySpec, similar_with_plan  # noqa: E402

CID = "bench-scale"
K = 10
BASE_DAY = datetime(2024, 6, 1, 10, 30, tzinfo=UTC)  # bench_scale's first scene


def _one(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return tuple(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="a database bench_scale.py --keep left")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--seed", type=int, default=8)
    a = ap.parse_args()
    out: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    with psycopg.connect(a.url) as c:
        register_vector(c)
        n = int(_one(c, "select count(*) from items where collection_id = %s", (CID,))[0])
        part = _one(
            c,
            "select c.relname from pg_inherits h join pg_class c on c.oid = h.inhrelid"
            " where h.inhparent = 'embeddings'::regclass and c.relname <> 'embeddings_default'"
            " order by pg_relation_size(c.oid) desc limit 1",
        )[0]
        idx = _one(
            c,
            "select c.relname, pg_relation_size(c.oid) from pg_index x join pg_class c"
            " on c.oid = x.indexrelid where x.indrelid = %s::regclass"
            " and pg_get_indexdef(x.indexrelid) like '%%(datetime)'",
            (part,),
        )
        out.update(n=n, partition=part, datetime_index=idx[0], datetime_index_bytes=int(idx[1]))
        c.execute("set statement_timeout = 0")
        t = time.perf_counter()
        c.execute(f"create index embcat_bench_dt on public.{part} (datetime)")
        out["datetime_index_build_s"] = time.perf_counter() - t
        c.rollback()
    rng = np.random.default_rng(a.seed)
    rows = sorted(int(r) for r in rng.choice(n, a.queries, replace=False))
    day = int(rng.integers(0, max(1, n // 10_000)))
    lo = BASE_DAY + timedelta(days=day)
    window = f"{lo.isoformat()}/{(lo + timedelta(hours=1)).isoformat()}"
    rows_filter = Filter.from_search(SearchQuery(collections=[CID], datetime=window))
    joined = interval_clause(parse_interval(window), ITEMS)
    times: dict[str, list[float]] = {"rows": [], "join": [], "rows, no index": []}
    plans: dict[str, dict[str, int]] = {k: {} for k in times}
    specs = [
        SimilaritySpec.model_validate({"item": {"collection": CID, "id": f"chip-{r:08d}"}})
        for r in rows
    ]
    answers: dict[str, list[list[str]]] = {k: [] for k in times}

    def timed(name: str, run: Any, qi: int, spec: SimilaritySpec) -> None:
        for attempt in range(2):  # the first query of each way warms its plan
            t = time.perf_counter()
            hits, plan = run(spec)
            elapsed = time.perf_counter() - t
            if attempt == 0 and qi > 0:
                break
        times[name].append(elapsed)
        plans[name][plan.strategy] = plans[name].get(plan.strategy, 0) + 1
        answers[name].append([h.item_id for h in hits])

    with psycopg.connect(a.url, autocommit=True) as c:
        register_vector(c)
        for qi, spec in enumerate(specs):  # interleaved, query by query: the same noise
            timed("rows", lambda s: similar_with_plan(c, s, rows_filter, K), qi, spec)
            timed("join", lambda s: similar_with_plan(c, s, joined, K, collections=[CID]), qi, spec)
    with psycopg.connect(a.url) as nx:  # then without the index, in one rolled-back transaction
        register_vector(nx)
        nx.execute("drop index public.embeddings_datetime_idx")
        for qi, spec in enumerate(specs):
            timed("rows, no index", lambda s: similar_with_plan(nx, s, rows_filter, K), qi, spec)
        nx.rollback()
    out["same_answers"] = {
        k: sum(x == y for x, y in zip(answers["rows"], v, strict=True)) for k, v in answers.items()
    }
    out["load_average_at_end"] = os.getloadavg()
    out["ways"] = {
        k: {
            "p50_ms": 1000 * statistics.median(v),
            "p95_ms": 1000 * float(np.percentile(v, 95)),
            "strategies": plans[k],
        }
        for k, v in times.items()
    }
    print(f"{'way':<16} {'p50 ms':>8} {'p95 ms':>8}  strategies")
    for k, v in out["ways"].items():
        print(f"{k:<16} {v['p50_ms']:>8.1f} {v['p95_ms']:>8.1f}  {v['strategies']}")
    print(
        f"datetime index: {out['datetime_index_bytes'] / 2**20:.1f} MB,"
        f" built in {out['datetime_index_build_s']:.1f} s on {n:,} rows"
    )
    print("load average", out["load_average_at_start"], "->", out["load_average_at_end"])
    path = ROOT / "benchmarks" / "results" / f"datetime_{n}.json"
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
