"""Partitioned storage (migration 0021): each space in its own partition of ``embeddings``,
its index a plain index there, and one space's index build not blocking another's publish."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
from shardgen import write_run  # tests/ is on sys.path under pytest

from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.store import partitions, space_index, spaces


def _name() -> str:
    return "part-" + uuid.uuid4().hex[:8]


def _index_table(url: str, index: str) -> str | None:
    with psycopg.connect(url) as c:
        row = c.execute(
            "select x.indrelid::regclass::text from pg_index x"
            " join pg_class c on c.oid = x.indexrelid where c.relname = %s",
            (index,),
        ).fetchone()
    return row[0] if row else None


def test_a_publish_puts_its_space_in_its_own_partition_with_its_index(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    url = db_settings.database_url
    run = write_run(tmp_path / "run", 60, dims=8, seed=1, encoder=_name())
    res = publish(run, collection_id=_name(), settings=db_settings, progress=False)
    part = partitions.partition_name(res.space_id)
    with psycopg.connect(url) as c:
        assert c.execute(f"select count(*) from {part}").fetchone() == (60,)
        space = spaces.get_space(c, res.space_id)
        # analysed: the partition's own statistics
        assert c.execute(
            "select reltuples from pg_class where relname = %s", (part,)
        ).fetchone() == (60,)
    assert _index_table(url, space.index_name) == part


def test_rows_of_a_space_without_partition_move_into_it_before_its_index(
    database_url: str,
) -> None:
    """Rows written for a space that has no partition yet (as a mirror's first pages) sit
    in the default partition; building the space's index moves them into its own."""
    cid = _name()
    with psycopg.connect(database_url) as c:
        space = spaces.get_or_create_space(
            c, encoder_name=_name(), encoder_version="1", dimensions=3,
            index_kind="hnsw-halfvec",
        )  # fmt: skip
        c.execute("insert into collections (id, stac, space_id) values (%s, '{}', %s)",
                  (cid, space.id))  # fmt: skip
        for k in range(5):
            c.execute(
                "insert into items (collection_id, id, geometry, bbox, datetime) values"
                " (%s, %s, ST_SetSRID(ST_MakePoint(%s, 1), 4326), %s, now())",
                (cid, f"i{k}", k, [k, 1, k, 1]),
            )
            c.execute(
                "insert into embeddings (collection_id, item_id, space_id, embedding)"
                " values (%s, %s, %s, %s::halfvec)",
                (cid, f"i{k}", space.id, f"[1,{k},2]"),
            )
        assert partitions.space_table(c, space.id) == partitions.DEFAULT_PARTITION
        assert space_index.ensure_index(c, space)
        c.commit()
        part = partitions.partition_name(space.id)
        assert c.execute(f"select count(*) from {part}").fetchone() == (5,)
        assert c.execute(
            "select count(*) from embeddings_default where space_id = %s", (space.id,)
        ).fetchone() == (0,)
        rows = c.execute("select item_id from embcat.similar(%s, 'i2', 2)", (cid,)).fetchall()
        assert len(rows) == 2
    assert _index_table(database_url, space.index_name) == part


def test_an_index_build_of_one_space_does_not_block_a_publish_of_another(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    """A CREATE INDEX holds a SHARE lock on its table until commit: on one shared table it
    stopped every publish; on the space's partition (and under the space's merge lock) a
    publish of another space goes through while it is held."""
    url = db_settings.database_url
    first = publish(
        write_run(tmp_path / "a", 40, dims=8, seed=2, encoder=_name()),
        collection_id=_name(), settings=db_settings, progress=False,
    )  # fmt: skip
    other_encoder = _name()
    publish(
        write_run(tmp_path / "b", 40, dims=8, seed=3, encoder=other_encoder),
        collection_id=_name(), settings=db_settings, progress=False,
    )  # fmt: skip
    out: dict[str, Any] = {}
    with psycopg.connect(url) as builder:
        # what `embcat index build` of the first space holds while it builds
        partitions.merge_lock(builder, exclusive=False)
        partitions.merge_lock(builder, first.space_id, exclusive=True)
        builder.execute(f"lock table {partitions.partition_name(first.space_id)} in share mode")

        def work() -> None:
            try:
                out["result"] = publish(
                    write_run(tmp_path / "c", 40, dims=8, seed=4, encoder=other_encoder),
                    collection_id=_name(), settings=db_settings, progress=False,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - handed to the test
                out["error"] = exc

        t = threading.Thread(target=work)
        t.start()
        t.join(timeout=30)
        finished = not t.is_alive()
        builder.rollback()
    t.join()
    assert finished, "the publish of the other space waited for the index build"
    assert "error" not in out
    assert out["result"].inserted == 40


def test_two_publishes_of_one_new_space_share_its_partition(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    """Both register the same new space at once: the second waits for the first's
    partition and then loads into it (neither fails on the other's table)."""
    encoder = _name()
    runs = [write_run(tmp_path / f"r{k}", 30, dims=8, seed=k, encoder=encoder) for k in (5, 6)]
    out: list[dict[str, Any]] = [{}, {}]

    def work(k: int) -> None:
        try:
            out[k]["result"] = publish(
                runs[k], collection_id=_name(), settings=db_settings, progress=False
            )
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out[k]["error"] = exc

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [o.get("error") for o in out] == [None, None]
    sid = out[0]["result"].space_id
    assert out[1]["result"].space_id == sid
    with psycopg.connect(db_settings.database_url) as c:
        part = partitions.partition_name(sid)
        assert c.execute(f"select count(*) from {part}").fetchone() == (60,)
        assert partitions.has_partition(c, sid)


def test_a_publish_leaves_the_planner_estimates_for_the_rows_own_filters(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    """A bbox or datetime filter on the embedding rows is estimated from their statistics:
    without them a 10 % box was estimated at 2 rows and searched exactly."""
    cid = _name()
    publish(write_run(tmp_path / "r", 20_000, 16, 1, encoder=cid), collection_id=cid,
            settings=db_settings, progress=False)  # fmt: skip
    with psycopg.connect(db_settings.database_url) as c:
        space = spaces.collection_space(c, cid)
        assert space is not None
        x0, y0, x1, y1 = c.execute(
            "select ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b) from"
            " (select ST_Extent(geometry)::geometry b from embeddings where space_id = %s) s",
            (space.id,),
        ).fetchone()  # type: ignore[misc]
        where = (
            f"e.space_id = {space.id} and ST_Intersects(e.geometry,"
            f" ST_MakeEnvelope({x0}, {y0}, {x1}, {y0 + (y1 - y0) / 10}, 4326))"
        )
        plan = c.execute(f"explain (format json) select 1 from embeddings e where {where}")
        estimate = plan.fetchone()[0][0]["Plan"]["Plan Rows"]  # type: ignore[index]
        real = c.execute(f"select count(*) from embeddings e where {where}").fetchone()[0]  # type: ignore[index]
        assert real / 2 <= estimate <= real * 2
        table = partitions.partition_name(space.id)
        stats = c.execute("select attname from pg_stats where tablename = %s", (table,))
        analyzed = {r[0] for r in stats}
        assert {"geometry", "datetime"} <= analyzed
