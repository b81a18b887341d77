"""Hostile load (issue 15, finding 11): costly similarity requests from 12 clients while a
probe client reads items; what the probes get (status, p50/p99) and what the attackers get.

Scenarios, each ``--duration`` seconds:
- ``baseline``: the probes alone;
- ``over-caps``: 12 clients loop exact similarity with a 20,000-vertex intersects (the
  round's attack: 11 s each, 4 of 7 probes 503 before the caps; now refused with 400);
- ``under-caps``: the same with 9,000 vertices, under the vertex cap (still allowed).

Every simulated client shares 127.0.0.1 and the per-client limit is off, so the attackers
stand for many addresses. Each server setting of ``--expensive`` (``EMBCAT_MAX_EXPENSIVE_
REQUESTS``; 0 = no bound, the behaviour before finding 11's fix) runs every scenario on
the same data, one after the other, so the rows compare under the same machine load.

    nice -n 10 .venv/bin/python benchmarks/bench_hostile.py --items 20000 --duration 15 \
        --expensive 0 2

Writes ``benchmarks/results/hostile.json`` as it goes; prints a table. Times are measured,
never asserted; on the shared machine read them side by side with ``baseline``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_load  # noqa: E402  (database, data and server helpers)

OUT = Path(__file__).resolve().parent / "results" / "hostile.json"


def circle(vertices: int, cx: float = 10.0, cy: float = 10.0, r: float = 9.0) -> dict:
    ring = [
        [
            round(cx + r * math.cos(2 * math.pi * k / vertices), 4),
            round(cy + r * math.sin(2 * math.pi * k / vertices), 4),
        ]
        for k in range(vertices)
    ]
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def attacker(base: str, body: dict, stop: float, out: list[tuple[int, float]]) -> None:
    with httpx.Client(timeout=60) as http:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                status = http.post(base + "/search", json=body).status_code
            except httpx.HTTPError:
                status = -1
            out.append((status, time.perf_counter() - t0))


def prober(base: str, ids: list[str], stop: float, out: list[tuple[int, float]]) -> None:
    rng = np.random.default_rng(3)
    with httpx.Client(timeout=60) as http:
        while time.monotonic() < stop:
            iid = ids[int(rng.integers(len(ids)))]
            t0 = time.perf_counter()
            try:
                status = http.get(
                    f"{base}/collections/{bench_load.COLLECTION}/items/{iid}"
                ).status_code
            except httpx.HTTPError:
                status = -1
            out.append((status, time.perf_counter() - t0))
            time.sleep(0.2)


def summary(rows: list[tuple[int, float]]) -> dict[str, Any]:
    times = np.array([t for _, t in rows]) * 1000 if rows else np.array([0.0])
    statuses: dict[str, int] = {}
    for s, _ in rows:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    return {
        "requests": len(rows),
        "statuses": statuses,
        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5")),
        "p50_ms": round(float(np.percentile(times, 50)), 1),
        "p99_ms": round(float(np.percentile(times, 99)), 1),
    }


def scenarios(ids: list[str], base: str, duration: float, clients: int, pid: int) -> Any:
    """Yields ``(label, {probes, attacks, peak_rss_mb})`` for each scenario against ``base``."""
    item = {"collection": bench_load.COLLECTION, "id": ids[0]}
    bodies: dict[str, dict | None] = {
        "baseline": None,
        "over-caps": {"intersects": circle(20_000), "similarity": {"item": item, "exact": True}},
        "under-caps": {"intersects": circle(9_000), "similarity": {"item": item, "exact": True}},
    }
    for label, body in bodies.items():
        stop = time.monotonic() + duration
        attacks: list[tuple[int, float]] = []
        probes: list[tuple[int, float]] = []
        threads = [threading.Thread(target=prober, args=(base, ids, stop, probes))]
        if body is not None:
            body = {"collections": [bench_load.COLLECTION], "limit": 10, **body}
            threads += [
                threading.Thread(target=attacker, args=(base, body, stop, attacks))
                for _ in range(clients)
            ]
        for t in threads:
            t.start()
        peak = 0.0
        while any(t.is_alive() for t in threads):
            peak = max(peak, bench_load.process_tree_rss_mb(pid))
            time.sleep(0.5)
        for t in threads:
            t.join()
        yield (
            label,
            {
                "probes": summary(probes),
                "attacks": summary(attacks),
                "peak_rss_mb": round(peak),
            },
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--expensive", type=int, nargs="+", default=[2])
    args = ap.parse_args()
    name = f"embcat_hostile_{uuid.uuid4().hex[:8]}"
    url = bench_load.create_database(name)
    results: dict[str, Any] = {
        "items": args.items,
        "clients": args.clients,
        "load_average_start": os.getloadavg(),
        "runs": {},
    }
    try:
        ids, _ = bench_load.load(url, args.items, args.dims)
        for bound in args.expensive:
            os.environ["EMBCAT_MAX_EXPENSIVE_REQUESTS"] = str(bound)
            proc, base = bench_load.start_server(url, workers=1, pool_max=10)
            try:
                for label, run in scenarios(ids, base, args.duration, args.clients, proc.pid):
                    results["runs"][f"{label} (expensive bound {bound})"] = run
                    results["load_average_end"] = os.getloadavg()
                    OUT.parent.mkdir(exist_ok=True)
                    OUT.write_text(json.dumps(results, indent=2))
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        bench_load.drop_database(name)
    print(
        f"{'scenario':<34} {'probes':>6} {'5xx':>4} {'p50 ms':>8} {'p99 ms':>8} {'RSS':>5}  attacks"
    )
    for label, run in results["runs"].items():
        p, a = run["probes"], run["attacks"]
        print(
            f"{label:<34} {p['requests']:>6} {p['server_errors']:>4} {p['p50_ms']:>8}"
            f" {p['p99_ms']:>8} {run['peak_rss_mb']:>5}  {a['requests']} {a['statuses']}"
            f" p50 {a['p50_ms']} ms"
        )
    print(f"load average {results['load_average_start']} -> {results.get('load_average_end')}")


if __name__ == "__main__":
    main()
