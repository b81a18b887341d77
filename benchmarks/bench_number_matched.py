"""The cost of ``numberMatched`` on STAC item search: the same embcat server code with
``EMBCAT_NUMBER_MATCHED`` = ``off``, ``estimate`` (the default) and ``exact``.

Three uvicorn servers (one worker each) on one database loaded with bench_search's
generated items; the same POST /search requests go to all three, interleaved (same machine
noise). Reported per query kind: p50/p95 of each, the ratios to ``off`` (the peer: our own
server without numberMatched), and the median numberMatched of each mode.

    .venv/bin/python -m benchmarks.bench_number_matched --items 100000 --queries 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import uuid
from typing import Any

import httpx
import psycopg

from benchmarks.bench_search import (
    BASE_URL,
    RESULTS,
    ROOT,
    free_port,
    load_ours,
    make_items,
    pct,
    queries,
    start,
    with_db,
)
from embcat.catalog import migrate
from embcat.catalog.settings import DatabaseSettings

MODES = ("off", "estimate", "exact")


def _server(url: str, port: int, mode: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EMBCAT_DATABASE_URL": url,
        "EMBCAT_MAX_LIMIT": "1000",
        "EMBCAT_NUMBER_MATCHED": mode,
    }
    cmd = [
        str(ROOT / ".venv" / "bin" / "uvicorn"), "embcat.api.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    return start(cmd, env, port)


def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"embcat_bench_matched_{uuid.uuid4().hex[:8]}"
    url = with_db(BASE_URL, name)
    base_db = BASE_URL.rsplit("/", 1)[-1].split("?")[0] or "embcat"
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"items": args.items, "queries": args.queries, "kinds": {}}
    path = RESULTS / f"number_matched_{args.items}.json"
    try:
        with psycopg.connect(BASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{base_db}_template"')
        migrate.upgrade(DatabaseSettings(database_url=url))
        t_load = load_ours(url, make_items(args.items))
        print(f"loaded {args.items} items in {t_load:.1f} s", flush=True)
        ports = {mode: free_port() for mode in MODES}
        for mode in MODES:
            procs.append(_server(url, ports[mode], mode))
        with httpx.Client(timeout=60) as client:
            for kind, bodies in queries(args.queries).items():
                times: dict[str, list[float]] = {mode: [] for mode in MODES}
                matched: dict[str, list[int]] = {mode: [] for mode in MODES[1:]}
                for body in bodies:
                    for mode in MODES:
                        t0 = time.perf_counter()
                        r = client.post(f"http://127.0.0.1:{ports[mode]}/search", json=body)
                        times[mode].append((time.perf_counter() - t0) * 1000)
                        r.raise_for_status()
                        if mode != "off":
                            matched[mode].append(int(r.json()["numberMatched"]))
                row: dict[str, Any] = {
                    mode: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95)} for mode, v in times.items()
                }
                for mode in MODES[1:]:
                    row[mode]["ratio_p50_to_off"] = row[mode]["p50_ms"] / row["off"]["p50_ms"]
                    row[mode]["number_matched_median"] = sorted(matched[mode])[
                        len(matched[mode]) // 2
                    ]
                out["kinds"][kind] = row
                est, exa = row["estimate"], row["exact"]
                print(
                    f"{kind:30s} off {row['off']['p50_ms']:6.1f} ms"
                    f" | estimate {est['p50_ms']:6.1f} ms ({est['ratio_p50_to_off']:.2f}x,"
                    f" median {est['number_matched_median']})"
                    f" | exact {exa['p50_ms']:6.1f} ms ({exa['ratio_p50_to_off']:.2f}x,"
                    f" median {exa['number_matched_median']})",
                    flush=True,
                )
                RESULTS.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(out, indent=2))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        with psycopg.connect(BASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=40)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
