"""Shards (migration 0024, catalog/store/shards.py): a space's partition on other PostgreSQL
servers answers as the same data on one server.

Two local shard clusters (scripts/provision-shards.sh, reused across runs) hold one fresh
database each per test session. Two catalogue databases get the same three runs published
(an ivfflat-bit space of 256 dims, an hnsw-halfvec one of 16, an hnsw-bit one of 64); in
one of them all spaces are placed on the two shards. Every comparison is between the two
databases.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pyarrow.parquet as pq
import pytest
from helpers_server import start_server
from psycopg import sql
from shardgen import write_run
from testdb import BASE_URL, create_database, drop_database, provisioning_lock

from embcat.catalog.errors import InvalidInput
from embcat.catalog.publish import publish
from embcat.catalog.search import cql2_to_sql
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.similarity import SimilaritySettings, parse_spec, similar
from embcat.catalog.store import partitions, shard_layout, shards, space_index, spaces
from embcat.catalog.store.spaces import IndexSettings

ROOT = Path(__file__).resolve().parents[2]
N_SHARDS = 2


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@pytest.fixture(scope="session")
def shard_urls() -> Iterator[list[str]]:
    """One fresh database on each local shard cluster (created by
    scripts/provision-shards.sh if missing; quick when they exist)."""
    # The script adds postgres_fdw and dblink to the catalogue database it is given and to
    # its template: the server's base one (whose template the test databases come from),
    # not the session database that the database_url fixture may have exported by now.
    env = {**os.environ, "EMBCAT_DATABASE_URL": BASE_URL}
    with provisioning_lock():  # xdist workers each run this fixture
        done = subprocess.run(
            [str(ROOT / "scripts/provision-shards.sh"), str(N_SHARDS)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"scripts/provision-shards.sh {N_SHARDS} failed: {done.stderr.strip()}")
    out = done.stdout.split()
    templates = [u for u in out if u.startswith("postgresql://")]
    name = f"embcat_test_{uuid.uuid4().hex[:10]}"
    urls = []
    for t in templates:
        with psycopg.connect(_with_db(t, "postgres"), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE embcat_shard_template')
        urls.append(_with_db(t, name))
    try:
        yield urls
    finally:
        for u in urls:
            with psycopg.connect(_with_db(u, "postgres"), autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Pair:
    single: str
    sharded: str
    collections: dict[str, str]  # kind -> collection id (the same in both databases)
    spaces: dict[str, int]  # kind -> space id in the sharded database


def _publish_both(tmp: Path, urls: list[str]) -> tuple[dict[str, str], list[dict[str, int]]]:
    runs = {
        "ivfflat-bit": write_run(tmp / "bit", 300, dims=256, seed=3, encoder="shard-bit"),
        "hnsw-halfvec": write_run(tmp / "hnsw", 300, dims=16, seed=4, encoder="shard-hnsw"),
        "hnsw-bit": write_run(tmp / "hbit", 300, dims=64, seed=5, encoder="shard-hnswbit"),
    }
    cids = {k: f"shard-{k}" for k in runs}
    found: list[dict[str, int]] = []
    for url in urls:
        ids = {}
        for kind, run in runs.items():
            res = publish(
                run,
                collection_id=cids[kind],
                settings=DatabaseSettings(database_url=url),
                progress=False,
                index=IndexSettings(kind=kind),  # the kind of the new space
            )
            ids[kind] = res.space_id
        with psycopg.connect(url) as c:  # ten distinct days (the runs have one)
            c.execute(
                "update items set datetime = datetime"
                " + make_interval(days => right(id, 2)::int % 10)"
            )
        found.append(ids)
    return cids, found


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, shard_urls: list[str]) -> Iterator[Pair]:
    single, sharded = create_database("embcat_shardtest"), create_database("embcat_shardtest")
    try:
        cids, ids = _publish_both(tmp_path_factory.mktemp("runs"), [single, sharded])
        with psycopg.connect(sharded) as c:
            for k, url in enumerate(shard_urls):
                shard_layout.add_shard(c, f"s{k}", url, home_url=sharded)
            c.commit()
            for kind, sid in ids[1].items():
                assert spaces.get_space(c, sid).index_kind == kind
                shard_layout.place(c, sid, [f"s{k}" for k in range(len(shard_urls))])
        yield Pair(single, sharded, cids, ids[1])
    finally:
        drop_database(single)
        drop_database(sharded)


def _hits(url: str, clause: dict[str, Any], where: sql.Composable | None = None,
          settings: SimilaritySettings | None = None, area: sql.Composable | None = None,
          limit: int = 10) -> list[tuple[str, str, float]]:  # fmt: skip
    with psycopg.connect(url) as c:
        hits = similar(c, parse_spec(clause), where, limit, settings=settings, area=area)
    return [(h.collection_id, h.item_id, h.distance) for h in hits]


def test_the_rows_live_on_the_shards(pair: Pair, shard_urls: list[str]) -> None:
    counts = []
    for url in shard_urls:
        with psycopg.connect(url) as c:
            counts.append(
                c.execute(
                    "select count(*) from embeddings where space_id = %s",
                    (pair.spaces["ivfflat-bit"],),
                ).fetchone()[0]  # type: ignore[index]
            )
    assert sum(counts) == 300 and all(0 < n < 300 for n in counts)
    for url in shard_urls:  # each shard built the space's key, GiST and similarity index
        with psycopg.connect(url) as c:
            for kind, sid in pair.spaces.items():
                names = {r[0] for r in c.execute(
                    "select indexname from pg_indexes where tablename = %s",
                    (partitions.partition_name(sid),),
                ).fetchall()}  # fmt: skip
                assert spaces.index_name(sid, kind) in names
                assert f"{partitions.partition_name(sid)}_pkey" in names
    with psycopg.connect(pair.sharded) as c:
        assert c.execute(
            "select count(*) from embeddings where space_id = %s", (pair.spaces["ivfflat-bit"],)
        ).fetchone() == (300,)


@pytest.mark.parametrize("kind", ["ivfflat-bit", "hnsw-halfvec", "hnsw-bit"])
@pytest.mark.parametrize("exact", [False, True])
def test_similarity_unfiltered_is_the_same(pair: Pair, kind: str, exact: bool) -> None:
    cid = pair.collections[kind]
    clause = {"item": {"collection": cid, "id": "chip-00000042"}, "exact": exact}
    # exact_threshold 0: the index path, not the small-collection exact scan
    s = SimilaritySettings(exact_threshold=0, exact_fraction=0)
    one = _hits(pair.single, clause, settings=s)
    assert len(one) == 10
    assert _hits(pair.sharded, clause, settings=s) == one


@pytest.mark.parametrize("kind", ["ivfflat-bit", "hnsw-halfvec", "hnsw-bit"])
@pytest.mark.parametrize("name", ["bbox", "datetime", "cql2"])
def test_similarity_filtered_is_the_same(pair: Pair, kind: str, name: str) -> None:
    cid = pair.collections[kind]
    with psycopg.connect(pair.single) as c:
        x0, y0, x1, y1, t0, t1 = c.execute(
            "select min(bbox[1]), min(bbox[2]), max(bbox[3]), max(bbox[4]),"
            " min(datetime), max(datetime) from items where collection_id = %s",
            (cid,),
        ).fetchone()  # type: ignore[misc]
    area = where = None
    if name == "bbox":
        area = sql.SQL("ST_MakeEnvelope({}, {}, {}, {}, 4326)").format(
            x0, y0, (x0 + x1) / 2, (y0 + y1) / 2
        )
    elif name == "datetime":
        where = sql.SQL("i.datetime >= {}").format(t0 + dt.timedelta(days=6))
    else:
        where = cql2_to_sql({"op": "like", "args": [{"property": "id"}, "chip-0000001%"]})
    clause = {"item": {"collection": cid, "id": "chip-00000042"}}
    s = SimilaritySettings(exact_threshold=0, exact_fraction=0)
    one = _hits(pair.single, clause, where=where, area=area, settings=s)
    assert one
    assert _hits(pair.sharded, clause, where=where, area=area, settings=s) == one


def test_per_request_settings_reach_every_shard(pair: Pair) -> None:
    """The settings travel as arguments and each shard applies them to its own query:
    every shard answers with the values given, not its defaults."""
    with psycopg.connect(pair.sharded) as c:
        rows = c.execute(
            "select collection_id, item_id from embcat.shard_ranked(%s, %s, %s, %s)",
            (
                pair.spaces["hnsw-halfvec"],
                ["hnsw.ef_search", "ivfflat.probes", "hnsw.iterative_scan"],
                ["123", "7", "relaxed_order"],
                "select current_setting('hnsw.ef_search'), current_setting('ivfflat.probes')"
                " || '/' || current_setting('hnsw.iterative_scan'), 0::float8",
            ),
        ).fetchall()
    assert rows == [("123", "7/relaxed_order")] * N_SHARDS


def test_similarity_overrides_the_shards_own_defaults(pair: Pair, shard_urls: list[str]) -> None:
    """End to end: shards whose own defaults would answer approximately (the IVFFlat
    index forced: no seq, bitmap or sort plans; pgvector's ivfflat.probes 1 and no
    iterative scan: a handful of candidates per shard) still return the one-server hits,
    because the query's own probes and iterative scan (which visit every list here) reach
    them. Fails without forwarding."""
    for url in shard_urls:
        with psycopg.connect(url, autocommit=True) as c:
            for name in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                c.execute(f'ALTER DATABASE "{urlsplit(url).path[1:]}" SET {name} = off')
    try:
        cid = pair.collections["ivfflat-bit"]
        s = SimilaritySettings(exact_threshold=0, exact_fraction=0)
        for row in (3, 42, 77):
            clause = {"item": {"collection": cid, "id": f"chip-{row:08d}"}}
            one = _hits(pair.single, clause, settings=s)
            assert _hits(pair.sharded, clause, settings=s) == one
    finally:
        for url in shard_urls:
            with psycopg.connect(url, autocommit=True) as c:
                c.execute(f'ALTER DATABASE "{urlsplit(url).path[1:]}" RESET ALL')


def test_similarity_forwards_the_session_settings(pair: Pair) -> None:
    """What a similarity query has set for itself is what goes to the shards."""
    with psycopg.connect(pair.sharded) as c:
        c.execute("select '[1]'::vector")  # pgvector loaded: its settings known
        c.execute("set hnsw.ef_search = 77")
        c.execute("set ivfflat.probes = 9")
        got = shards.session_settings(c)
        space = spaces.get_space(c, pair.spaces["hnsw-halfvec"])
        query = shards.ranked_across(c, space, sql.SQL("select 1"), {}, 5).as_string(c)
    assert got["hnsw.ef_search"] == "77" and got["ivfflat.probes"] == "9"
    assert set(got) == set(shards.FORWARDED_SETTINGS)
    names, vals = (",".join(x) for x in zip(*got.items(), strict=True))
    assert "{" + names + "}" in query and "{" + vals + "}" in query


def test_changing_the_index_of_a_sharded_space_is_refused(pair: Pair) -> None:
    with psycopg.connect(pair.sharded) as c:
        space = spaces.get_space(c, pair.spaces["hnsw-halfvec"])
        assert not space_index.ensure_index(c, space)
        with pytest.raises(InvalidInput, match="placed on shards"):
            space_index.ensure_index(c, space, kind="ivfflat-bit")


def test_deleting_items_deletes_their_sharded_vectors(pair: Pair, tmp_path: Path) -> None:
    with psycopg.connect(pair.sharded) as c:
        sid = pair.spaces["hnsw-halfvec"]
        cid = pair.collections["hnsw-halfvec"]
        c.execute("delete from items where collection_id = %s and id = 'chip-00000007'", (cid,))
        assert c.execute(
            "select count(*) from embeddings where space_id = %s and item_id = 'chip-00000007'",
            (sid,),
        ).fetchone() == (0,)
        c.rollback()


# ------------------------------------------------------------------------ over HTTP


@pytest.fixture(scope="module")
def servers(pair: Pair) -> Iterator[tuple[str, str]]:
    from embcat.api.settings import ApiSettings

    a = start_server(ApiSettings(database_url=pair.single, db_pool_max=2))
    b = start_server(ApiSettings(database_url=pair.sharded, db_pool_max=2))
    try:
        yield a.base_url, b.base_url
    finally:
        a.stop()
        b.stop()


def _same(a: str, b: str, method: str, path: str, **kw: Any) -> Any:
    ra = httpx.request(method, a + path, timeout=60, **kw)
    rb = httpx.request(method, b + path, timeout=60, **kw)
    assert ra.status_code == rb.status_code == 200, (ra.text[:300], rb.text[:300])
    if ra.headers.get("content-type", "").startswith("application/"):
        if "json" in ra.headers["content-type"]:
            ja = ra.text.replace(a, "BASE")
            jb = rb.text.replace(b, "BASE")
            assert ja == jb
            return ra.json()
    assert ra.content.replace(a.encode(), b"BASE") == rb.content.replace(b.encode(), b"BASE")
    return ra.content


def test_stac_search_with_similarity_is_the_same(pair: Pair, servers: tuple[str, str]) -> None:
    cid = pair.collections["ivfflat-bit"]
    body = {
        "collections": [cid],
        "limit": 7,
        "similarity": {"item": {"collection": cid, "id": "chip-00000011"}},
    }
    got = _same(*servers, "POST", "/search", json=body)
    assert len(got["features"]) == 7


def test_item_read_and_vector_asset_are_the_same(pair: Pair, servers: tuple[str, str]) -> None:
    cid = pair.collections["hnsw-halfvec"]
    item = _same(*servers, "GET", f"/collections/{cid}/items/chip-00000005")
    href = item["assets"]["embeddings"]["href"].replace(servers[0], "")
    _same(*servers, "GET", href)


def test_export_is_the_same(pair: Pair, servers: tuple[str, str]) -> None:
    cid = pair.collections["hnsw-halfvec"]
    tables = []
    for base in servers:
        r = httpx.get(f"{base}/collections/{cid}/export", timeout=60)
        assert r.status_code == 200, r.text[:300]
        tables.append(pq.read_table(io.BytesIO(r.content)).replace_schema_metadata(None))
    assert tables[0].num_rows == 300
    a, b = (
        str(t.to_pylist()).replace(base, "BASE") for t, base in zip(tables, servers, strict=True)
    )
    assert a == b


def test_change_feed_is_the_same(pair: Pair, servers: tuple[str, str]) -> None:
    cid = pair.collections["hnsw-halfvec"]
    feeds = []
    for base in servers:
        r = httpx.get(f"{base}/collections/{cid}/changes", timeout=60)
        assert r.status_code == 200, r.text[:300]
        # the cursor numbers are the database's own sequence (another test used some)
        feeds.append(
            {k: v for k, v in r.json().items() if k not in ("next", "high_water", "links")}
        )
    assert feeds[0] == feeds[1]


def test_cli_lists_the_shards_and_refuses_an_unknown_one(pair: Pair) -> None:
    from click.testing import CliRunner

    from embcat.cli import main

    env = {"EMBCAT_DATABASE_URL": pair.sharded}
    listed = CliRunner().invoke(main, ["shard", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [s["name"] for s in json.loads(listed.output)] == ["s0", "s1"]
    refused = CliRunner().invoke(
        main, ["shard", "place", pair.collections["hnsw-halfvec"], "nope"], env=env
    )
    assert refused.exit_code != 0
    assert "not registered: nope" in refused.output


def test_publish_into_a_sharded_space_writes_through(pair: Pair, tmp_path: Path) -> None:
    """A second collection of the sharded space (same encoder): its rows go to the shards
    (ignore mode: a second publish adds nothing) and rank as on one server. Last: it
    changes both databases."""
    run = write_run(tmp_path / "more", 120, dims=256, seed=9, encoder="shard-bit",
                    id_prefix="more")  # fmt: skip
    for url in (pair.single, pair.sharded):
        for _ in range(2):
            publish(run, collection_id="shard-more", settings=DatabaseSettings(database_url=url),
                    progress=False)  # fmt: skip
    with psycopg.connect(pair.sharded) as c:
        assert c.execute(
            "select count(*) from embeddings where collection_id = 'shard-more'"
        ).fetchone() == (120,)
        kinds = c.execute(  # the space's partition: foreign tables only, no local rows
            "select c.relkind from pg_inherits h join pg_class c on c.oid = h.inhrelid"
            " where h.inhparent = %s::regclass",
            (partitions.partition_name(pair.spaces["ivfflat-bit"]),),
        ).fetchall()
        assert kinds == [("f",)] * N_SHARDS
    clause = {"item": {"collection": "shard-more", "id": "more-00000003"}}
    one = _hits(pair.single, clause)
    assert len(one) == 10
    assert _hits(pair.sharded, clause) == one


def _snapshot(url: str, cid: str) -> list[Any]:
    with psycopg.connect(url) as c:
        return c.execute(
            "select i.id, st_astext(i.geometry), i.datetime, i.properties, e.embedding::text"
            " from items i join embeddings e on e.collection_id = i.collection_id"
            " and e.item_id = i.id where i.collection_id = %s order by i.id",
            (cid,),
        ).fetchall()


def test_a_mirror_of_the_sharded_catalogue_is_the_mirror_of_one_server(
    pair: Pair, servers: tuple[str, str], make_database: Any
) -> None:
    from embcat.catalog.mirror import MirrorOptions, mirror

    cid = pair.collections["hnsw-halfvec"]
    copies = []
    for base in servers:
        url = make_database()
        done = mirror(MirrorOptions(base, cid, page_rows=100), DatabaseSettings(database_url=url))
        assert done.upserted == 300
        copies.append(_snapshot(url, cid))
    assert copies[0] == copies[1]


def test_a_sharded_mirror_follows_its_origin(
    pair: Pair, servers: tuple[str, str], shard_urls: list[str], make_database: Any
) -> None:
    """A mirror whose space is placed on shards takes the origin's changes (an updated
    vector, a deleted item) through them, and ends as a plain mirror of the same origin.
    Last: it changes the one-server database."""
    from embcat.catalog.mirror import MirrorOptions, mirror

    cid, origin = pair.collections["hnsw-halfvec"], servers[0]
    sharded, plain = make_database(), make_database()
    mirror(MirrorOptions(origin, cid, page_rows=100), DatabaseSettings(database_url=sharded))
    own = [_with_db(u, urlsplit(u).path[1:] + "_m") for u in shard_urls]
    for u in own:
        with psycopg.connect(_with_db(u, "postgres"), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{urlsplit(u).path[1:]}" TEMPLATE embcat_shard_template')
    try:
        with psycopg.connect(sharded) as c:
            for k, u in enumerate(own):
                shard_layout.add_shard(c, f"m{k}", u, home_url=sharded)
            c.commit()
            space = spaces.collection_space(c, cid)
            assert space is not None
            shard_layout.place(c, space.id, ["m0", "m1"])
        with psycopg.connect(pair.single) as c:
            c.execute(
                "update embeddings set embedding = (select embedding from embeddings"
                " where collection_id = %(c)s and item_id = 'chip-00000001')"
                " where collection_id = %(c)s and item_id = 'chip-00000002'",
                {"c": cid},
            )
            c.execute(
                "update items set assets = jsonb_set(assets, '{embeddings,file:checksum}',"
                " (select assets -> 'embeddings' -> 'file:checksum' from items"
                "  where collection_id = %(c)s and id = 'chip-00000001'))"
                " where collection_id = %(c)s and id = 'chip-00000002'",
                {"c": cid},
            )
            c.execute("delete from items where collection_id = %s and id = 'chip-00000010'", (cid,))
        again = mirror(
            MirrorOptions(origin, cid, page_rows=100), DatabaseSettings(database_url=sharded)
        )
        assert (again.upserted, again.deleted) == (1, 1)
        mirror(MirrorOptions(origin, cid, page_rows=100), DatabaseSettings(database_url=plain))
        got = _snapshot(sharded, cid)
        assert len(got) == 299
        assert got == _snapshot(plain, cid)
    finally:
        drop_database(sharded)
        for u in own:
            with psycopg.connect(_with_db(u, "postgres"), autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{urlsplit(u).path[1:]}" WITH (FORCE)')


def test_provisioning_the_catalogue_ignores_the_shard_clusters(shard_urls: list[str]) -> None:
    # pg_lsclusters lists "embcat_shard1" before "main": the catalogue's provisioning took
    # the first cluster and refused ("listens on 5442, not 5432") once shards existed.
    name = f"embcat_provtest_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k != "EMBCAT_DATABASE_URL"}
    env.update(EMBCAT_DB_NAME=name, EMBCAT_DB_TUNE="0")
    try:
        with provisioning_lock():
            done = subprocess.run(
                [str(ROOT / "scripts/provision-db.sh")], env=env, capture_output=True, text=True,
                timeout=300, check=False,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"127.0.0.1:5432/{name}" in done.stdout
    finally:
        with psycopg.connect(_with_db(BASE_URL, "postgres"), autocommit=True) as c:
            for db in (name, f"{name}_template"):
                if c.execute("select 1 from pg_database where datname = %s", (db,)).fetchone():
                    c.execute(f'ALTER DATABASE "{db}" IS_TEMPLATE false')
                    c.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
