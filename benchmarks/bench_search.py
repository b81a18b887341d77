"""STAC item search without vectors: embcat vs stac-fastapi-pgstac on the same 100k items.

Both run as uvicorn servers (one worker each) on their own databases loaded with the same
generated items; the same requests (POST /search) go to both, interleaved so that both
see the same machine noise. Reported: p50/p95 latency per query kind, the ratio
(ours / peer), result counts, and the peak RSS of each server process.

The peer lives in a separate virtualenv (never in the project's dependencies):

    python3 -m venv /tmp/pgstac-venv
    /tmp/pgstac-venv/bin/pip install stac-fastapi.pgstac 'pypgstac[psycopg]' uvicorn
    .venv/bin/python -m benchmarks.bench_search --items 100000 --queries 40

The peer's database is created as superuser (``runuser -u postgres -- psql``) because
``pypgstac migrate`` needs postgis, btree_gist and unaccent and creates its own roles.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import psycopg

from embcat.catalog import migrate
from embcat.catalog.settings import DatabaseSettings, to_libpq_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BASE_URL = to_libpq_url(os.environ.get("EMBCAT_DATABASE_URL") or DatabaseSettings().database_url)
EXTENT = (-10.0, 40.0, 10.0, 50.0)  # 200 square degrees; a 1 % bbox is 2 x 1 degrees
START = datetime(2022, 1, 1, tzinfo=UTC)
SPAN_DAYS = 365
COLLECTION = "bench-search"


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def psql_superuser(sql: str, db: str = "postgres") -> None:
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-d",
            db,
            "-c",
            sql,
        ],
        check=True,
        cwd="/tmp",
    )


# --------------------------------------------------------------------------- data


def make_items(n: int, seed: int = 42) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    lon = rng.uniform(EXTENT[0], EXTENT[2] - 0.01, n)
    lat = rng.uniform(EXTENT[1], EXTENT[3] - 0.01, n)
    secs = rng.uniform(0, SPAN_DAYS * 86400, n)
    cloud = np.round(rng.uniform(0, 100, n), 1)
    platforms = np.array(["sentinel-2a", "sentinel-2b", "landsat-8", "landsat-9"])[
        rng.integers(0, 4, n)
    ]
    items = []
    for k in range(n):
        x, y, s = float(lon[k]), float(lat[k]), 0.01
        when = (START + timedelta(seconds=float(secs[k]))).isoformat().replace("+00:00", "Z")
        items.append(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "stac_extensions": [],
                "id": f"chip-{k:07d}",
                "collection": COLLECTION,
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]],
                },
                "bbox": [x, y, x + s, y + s],
                "properties": {
                    "datetime": when,
                    "eo:cloud_cover": float(cloud[k]),
                    "platform": str(platforms[k]),
                    "title": f"chip {k}",
                },
                "assets": {
                    "embeddings": {
                        "href": f"/collections/{COLLECTION}/items/chip-{k:07d}/embedding",
                        "type": "application/x-npy",
                        "roles": ["data"],
                    }
                },
                "links": [],
            }
        )
    return items


def collection() -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "id": COLLECTION,
        "description": "Generated chips for the search benchmark",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [list(EXTENT)]},
            "temporal": {"interval": [[START.isoformat(), None]]},
        },
        "links": [],
    }


def load_ours(url: str, items: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO collections (id, stac) VALUES (%s, %s::jsonb)",
            (COLLECTION, json.dumps(collection())),
        )
        with conn.cursor().copy(
            "COPY items (collection_id, id, geometry, bbox, datetime, properties, assets, links)"
            " FROM STDIN"
        ) as copy:
            for it in items:
                ring = it["geometry"]["coordinates"][0]
                wkt = "SRID=4326;POLYGON((" + ",".join(f"{x} {y}" for x, y in ring) + "))"
                copy.write_row(
                    (
                        COLLECTION,
                        it["id"],
                        wkt,
                        it["bbox"],
                        it["properties"]["datetime"],
                        json.dumps(it["properties"]),
                        json.dumps(it["assets"]),
                        "[]",
                    )
                )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE items")
    return time.perf_counter() - t0


def load_peer(venv: Path, url: str, items: list[dict[str, Any]], tmp: Path) -> float:
    coll_file, items_file = tmp / "collection.json", tmp / "items.ndjson"
    coll_file.write_text(json.dumps(collection()))
    with items_file.open("w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    t0 = time.perf_counter()
    for kind, path in (("collections", coll_file), ("items", items_file)):
        subprocess.run(
            [
                str(venv / "bin" / "pypgstac"),
                "load",
                kind,
                str(path),
                "--dsn",
                url,
                "--method",
                "insert",
            ],
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd} did not start")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- queries


def queries(n: int, seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {
        "bbox1%+datetime limit 10": [],
        "bbox1%+datetime limit 100": [],
        "cql2 property filter limit 10": [],
    }
    for _ in range(n):
        x = rng.uniform(EXTENT[0], EXTENT[2] - 2.0)
        y = rng.uniform(EXTENT[1], EXTENT[3] - 1.0)
        d0 = START + timedelta(days=rng.uniform(0, SPAN_DAYS - 120))
        d1 = d0 + timedelta(days=120)
        dt = f"{d0.isoformat().replace('+00:00', 'Z')}/{d1.isoformat().replace('+00:00', 'Z')}"
        base = {"collections": [COLLECTION], "bbox": [x, y, x + 2.0, y + 1.0], "datetime": dt}
        out["bbox1%+datetime limit 10"].append({**base, "limit": 10})
        out["bbox1%+datetime limit 100"].append({**base, "limit": 100})
        cloud = round(rng.uniform(1, 5), 1)
        platform = rng.choice(["sentinel-2a", "landsat-8"])
        out["cql2 property filter limit 10"].append(
            {
                "collections": [COLLECTION],
                "limit": 10,
                "filter-lang": "cql2-json",
                "filter": {
                    "op": "and",
                    "args": [
                        {"op": "<", "args": [{"property": "eo:cloud_cover"}, cloud]},
                        {"op": "=", "args": [{"property": "platform"}, platform]},
                    ],
                },
            }
        )
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def run(args: argparse.Namespace) -> dict[str, Any]:
    venv = Path(args.peer_venv)
    if not (venv / "bin" / "pypgstac").exists():
        sys.exit(f"peer venv {venv} lacks pypgstac; see this module's docstring")
    suffix = uuid.uuid4().hex[:8]
    ours_db, peer_db = f"embcat_bench_search_{suffix}", f"pgstac_bench_search_{suffix}"
    admin_url = BASE_URL
    ours_url, peer_url = with_db(admin_url, ours_db), with_db(admin_url, peer_db)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        base_db = urlsplit(admin_url).path.lstrip("/") or "embcat"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{ours_db}" TEMPLATE "{base_db}_template"')
        migrate.upgrade(DatabaseSettings(database_url=ours_url))
        user = urlsplit(admin_url).username or "embcat"
        psql_superuser(f'CREATE DATABASE "{peer_db}" OWNER "{user}"')
        psql_superuser(
            "CREATE EXTENSION IF NOT EXISTS postgis; CREATE EXTENSION IF NOT EXISTS btree_gist;"
            " CREATE EXTENSION IF NOT EXISTS unaccent;",
            peer_db,
        )
        # pgstac's roles are cluster-wide and its migration SETs them: made here (on a fresh
        # cluster; PostgreSQL 15 does not make the CREATEROLE user that creates a role its
        # member) or by an earlier run as another user, embcat needs their membership.
        psql_superuser(
            "DO $$ DECLARE r text; BEGIN FOREACH r IN ARRAY"
            " ARRAY['pgstac_admin', 'pgstac_ingest', 'pgstac_read'] LOOP"
            " IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN"
            " EXECUTE format('CREATE ROLE %I', r); END IF;"
            f" EXECUTE format('GRANT %I TO %I', r, '{user}'); END LOOP; END $$;",
            peer_db,
        )
        # embcat owns the database and has CREATEROLE: pypgstac migrate runs as embcat
        subprocess.run(
            [str(venv / "bin" / "pypgstac"), "migrate", "--dsn", peer_url],
            check=True,
            capture_output=True,
        )

        print(f"generating {args.items} items ...", flush=True)
        items = make_items(args.items)
        t_ours = load_ours(ours_url, items)
        with tempfile.TemporaryDirectory() as tmp:
            t_peer = load_peer(venv, peer_url, items, Path(tmp))
        del items
        print(f"loaded: embcat {t_ours:.1f} s, pgstac {t_peer:.1f} s", flush=True)

        port_ours, port_peer = free_port(), free_port()
        env_ours = {**os.environ, "EMBCAT_DATABASE_URL": ours_url, "EMBCAT_MAX_LIMIT": "1000"}
        procs.append(
            start(
                [
                    str(ROOT / ".venv" / "bin" / "uvicorn"),
                    "embcat.api.app:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port_ours),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env_ours,
                port_ours,
            )
        )
        parts = urlsplit(peer_url)
        env_peer = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EMBCAT_")},
            "PGUSER": parts.username or "embcat",
            "PGPASSWORD": parts.password or "",
            "PGHOST": parts.hostname or "127.0.0.1",
            "PGPORT": str(parts.port or 5432),
            "PGDATABASE": peer_db,
            "POSTGRES_USER": parts.username or "embcat",
            "POSTGRES_PASS": parts.password or "",
            "POSTGRES_HOST_READER": parts.hostname or "127.0.0.1",
            "POSTGRES_HOST_WRITER": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_DBNAME": peer_db,
        }
        procs.append(
            start(
                [
                    str(venv / "bin" / "uvicorn"),
                    "stac_fastapi.pgstac.app:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port_peer),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env_peer,
                port_peer,
            )
        )
        servers = {"embcat": (port_ours, procs[0].pid), "pgstac": (port_peer, procs[1].pid)}
        client = httpx.Client(timeout=60)
        rows = []
        for kind, bodies in queries(args.queries).items():
            lat: dict[str, list[float]] = {"embcat": [], "pgstac": []}
            counts: dict[str, list[int]] = {"embcat": [], "pgstac": []}
            for body in bodies[:3]:  # warm-up
                for port, _ in servers.values():
                    client.post(f"http://127.0.0.1:{port}/search", json=body)
            for body in bodies:
                for name, (port, _) in servers.items():
                    t0 = time.perf_counter()
                    r = client.post(f"http://127.0.0.1:{port}/search", json=body)
                    lat[name].append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                    counts[name].append(len(r.json()["features"]))
            row = {
                "query": kind,
                "n": len(bodies),
                **{f"{n}_p50_ms": pct(lat[n], 50) for n in lat},
                **{f"{n}_p95_ms": pct(lat[n], 95) for n in lat},
                "ratio_p50": pct(lat["embcat"], 50) / pct(lat["pgstac"], 50),
                "ratio_p95": pct(lat["embcat"], 95) / pct(lat["pgstac"], 95),
                "mean_features": {n: statistics.mean(c) for n, c in counts.items()},
            }
            rows.append(row)
        rss = {name: peak_rss_mib(pid) for name, (_, pid) in servers.items()}
        return {
            "items": args.items,
            "queries_per_kind": args.queries,
            "load_seconds": {"embcat_copy": t_ours, "pypgstac_load": t_peer},
            "peak_rss_mib": rss,
            "results": rows,
            "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        }
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{ours_db}" WITH (FORCE)')
            psql_superuser(f'DROP DATABASE IF EXISTS "{peer_db}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--peer-venv", default="/tmp/pgstac-venv")
    parser.add_argument("--keep", action="store_true", help="keep the two databases")
    args = parser.parse_args()
    out = run(args)
    print()
    print(
        f"{'query':32} {'embcat p50':>10} {'p95':>8} {'pgstac p50':>10} {'p95':>8}"
        f" {'ratio p50':>9} {'ratio p95':>9}"
    )
    for r in out["results"]:
        print(
            f"{r['query']:32} {r['embcat_p50_ms']:10.1f} {r['embcat_p95_ms']:8.1f}"
            f" {r['pgstac_p50_ms']:10.1f} {r['pgstac_p95_ms']:8.1f}"
            f" {r['ratio_p50']:9.2f} {r['ratio_p95']:9.2f}"
        )
    print(f"peak RSS (MiB): {out['peak_rss_mib']}; load: {out['load_seconds']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bench_search.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
