"""Migration 0026: embedding rows carry their item's datetime / start / end, kept in sync."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from shardgen import write_run
from vectorgen import load_collection

from embcat.catalog import migrate
from embcat.catalog.filters import Filter
from embcat.catalog.publish import publish
from embcat.catalog.search import SearchQuery
from embcat.catalog.settings import DatabaseSettings

DIFFERING = (
    "select count(*) from embeddings e join items i"
    " on i.collection_id = e.collection_id and i.id = e.item_id where e.collection_id = %s"
    " and (e.datetime, e.start_datetime, e.end_datetime)"
    " is distinct from (i.datetime, i.start_datetime, i.end_datetime)"
)


def _load(conn: psycopg.Connection, n: int = 5) -> str:
    cid = f"dt-{uuid.uuid4().hex[:8]}"
    vectors = np.random.default_rng(1).normal(size=(n, 4))
    load_collection(conn, cid, vectors, encoder_name=f"dt-{cid}", build_index=False)
    return cid


def test_a_datetime_window_alone_needs_no_join() -> None:
    rows = Filter.from_search(SearchQuery(datetime="2024-01-01T00:00:00Z/..")).for_embeddings()
    assert rows.rest is None and len(rows.conditions) == 1


def test_rows_written_without_times_get_their_items(conn: psycopg.Connection) -> None:
    cid = _load(conn)
    found = conn.execute(
        "select count(*), count(e.datetime) from embeddings e where e.collection_id = %s", (cid,)
    ).fetchone()
    assert found == (5, 5)
    assert conn.execute(DIFFERING, (cid,)).fetchone() == (0,)


def test_an_item_update_moves_its_rows_times(conn: psycopg.Connection) -> None:
    cid = _load(conn)
    start, end = datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 2, 1, tzinfo=UTC)
    conn.execute(
        "update items set datetime = null, start_datetime = %s, end_datetime = %s"
        " where collection_id = %s and id = 'item-2'",
        (start, end, cid),
    )
    row = conn.execute(
        "select datetime, start_datetime, end_datetime from embeddings"
        " where collection_id = %s and item_id = 'item-2'",
        (cid,),
    ).fetchone()
    assert row == (None, start, end)
    assert conn.execute(DIFFERING, (cid,)).fetchone() == (0,)


def test_publish_gives_the_rows_their_items_datetime(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    """The first publish of a space fills a partition not yet attached (no triggers):
    the merge writes the datetime itself."""
    name = "t" + uuid.uuid4().hex[:10]
    run = write_run(tmp_path / "run", 12, dims=8, seed=2, encoder=name)
    publish(run, collection_id=name, settings=db_settings, progress=False)
    with psycopg.connect(db_settings.database_url) as c:
        assert c.execute(
            "select count(*) from embeddings where collection_id = %s and datetime is not null",
            (name,),
        ).fetchone() == (12,)
        assert c.execute(DIFFERING, (name,)).fetchone() == (0,)


def _vector_indexes(url: str) -> list[tuple[str, bool]]:
    with psycopg.connect(url) as c:
        return c.execute(
            "select pg_get_indexdef(x.indexrelid), x.indisvalid from pg_index x"
            " join pg_class c on c.oid = x.indexrelid join pg_am a on a.oid = c.relam"
            " where a.amname in ('hnsw', 'ivfflat') order by 1"
        ).fetchall()


def test_upgrade_fills_existing_rows_and_rebuilds_the_space_index(
    make_database: Callable[..., str],
) -> None:
    # Rows written by today's code, then the schema taken back to before 0026 (its columns
    # dropped): the state of a catalogue that upgrades (today's code cannot write at 0021).
    url = make_database(migrated=True)
    settings = DatabaseSettings(database_url=url)
    with psycopg.connect(url) as c:
        register_vector(c)
        load_collection(c, "m", np.random.default_rng(3).normal(size=(30, 4)), encoder_name="m")
        c.commit()
    migrate.downgrade(settings, "0021")
    before = _vector_indexes(url)
    assert before  # the space's index, on its partition
    migrate.upgrade(settings, "0026")
    with psycopg.connect(url) as c:
        assert c.execute(DIFFERING, ("m",)).fetchone() == (0,)
        assert c.execute("select count(*) from embeddings where datetime is null").fetchone() == (
            0,
        )
    assert _vector_indexes(url) == before
