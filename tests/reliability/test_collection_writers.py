"""Writers hold back the change feed of their own collection only, and publishes lock only
what they touch (issue 15, finding 9: one publish made every collection's feed report
``pending_writers``, so mirrors of unrelated collections stalled).

Open writer transactions are real sessions that write through the items triggers
(migration 0017 declares the collection there, before a change number is drawn); the
paused publish is a real publish, stopped in its embeddings merge by a session that holds
``embeddings`` in SHARE mode.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from shardgen import write_run
from testdb import own_database
from vectorgen import load_collection

from embcat.catalog.changes import changes_since, safe_high_water
from embcat.catalog.db import connect
from embcat.catalog.publish import PublishResult, publish
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.store.partitions import merge_lock


@pytest.fixture(scope="module")
def db_settings() -> Iterator[DatabaseSettings]:
    """This module's own database: its setups publish into an empty catalogue, not among
    the session's partitions (2-8 s per setup late in a full run), and the tables it locks
    hold up no other module."""
    with own_database() as url:
        yield DatabaseSettings(database_url=url)


_NEW_ITEM = (
    "insert into items (collection_id, id, geometry, bbox, datetime)"
    " select collection_id, %s, geometry, bbox, datetime from items"
    " where collection_id = %s limit 1"
)


@pytest.fixture
def two(db_settings: DatabaseSettings) -> Iterator[tuple[str, str]]:
    """Two committed collections of 3 items each (no index)."""
    ids = (f"wa-{uuid.uuid4().hex[:6]}", f"wb-{uuid.uuid4().hex[:6]}")
    rng = np.random.default_rng(21)
    with connect(db_settings) as c:
        for cid in ids:
            vectors = rng.standard_normal((3, 4)).astype(np.float32)
            load_collection(c, cid, vectors, encoder_name=f"w-{cid}", build_index=False)
        c.commit()
    yield ids
    with psycopg.connect(db_settings.database_url) as c:
        c.execute("delete from collections where id = any(%s)", (list(ids),))


def _pending(url: str, cid: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        return changes_since(c, cid, 0).pending_writers


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda w, a: w.execute(_NEW_ITEM, ("new", a)), id="insert"),
        pytest.param(
            lambda w, a: w.execute(
                "update items set properties = '{\"x\": 1}' where collection_id = %s", (a,)
            ),
            id="update",
        ),
        pytest.param(
            lambda w, a: w.execute("delete from items where collection_id = %s", (a,)),
            id="delete",
        ),
    ],
)
def test_open_writer_holds_back_its_collections_feed_only(
    db_settings: DatabaseSettings, two: tuple[str, str], write: Any
) -> None:
    a, b = two
    url = db_settings.database_url
    with psycopg.connect(url) as writer:
        write(writer, a)
        assert (_pending(url, a), _pending(url, b)) == (1, 0)
        writer.rollback()
    assert _pending(url, a) == 0


def test_other_collections_feed_moves_past_an_open_writer(
    db_settings: DatabaseSettings, two: tuple[str, str]
) -> None:
    a, b = two
    url = db_settings.database_url
    with psycopg.connect(url) as writer, psycopg.connect(url, autocommit=True) as reader:
        writer.execute(_NEW_ITEM, ("open", a))
        with psycopg.connect(url) as other:
            other.execute(_NEW_ITEM, ("committed", b))
        page = changes_since(reader, b, 0)
        assert [c.id for c in page.changes][-1] == "committed"
        assert page.next_cursor == page.high_water > 0
        held = changes_since(reader, a, 0)
        assert (held.changes, held.next_cursor, held.pending_writers) == ([], 0, 1)
        writer.commit()


def test_writer_of_one_collection_that_writes_another_holds_both_back(
    db_settings: DatabaseSettings, two: tuple[str, str]
) -> None:
    """The insert trigger declares the second collection before the row keeps a number:
    the feed of ``a`` handed out before the insert does not skip it."""
    a, b = two
    url = db_settings.database_url
    with psycopg.connect(url) as writer, psycopg.connect(url, autocommit=True) as reader:
        writer.execute("update items set properties = '{}' where collection_id = %s", (b,))
        before = changes_since(reader, a, 0)
        assert before.pending_writers == 0
        writer.execute(_NEW_ITEM, ("late", a))
        assert changes_since(reader, a, before.next_cursor).pending_writers == 1
        writer.commit()
        after = changes_since(reader, a, before.next_cursor)
    assert [c.id for c in after.changes] == ["late"]


def test_writer_that_bypasses_the_triggers_holds_back_every_feed(
    db_settings: DatabaseSettings, two: tuple[str, str]
) -> None:
    url = db_settings.database_url
    with psycopg.connect(url) as writer:
        writer.execute("lock table items in row exclusive mode")  # declares nothing
        assert [_pending(url, cid) for cid in two] == [1, 1]
        with psycopg.connect(url, autocommit=True) as c:
            assert safe_high_water(c) == (None, 1)  # no collection: any writer counts


def test_rolled_back_savepoint_undoes_the_declaration(
    db_settings: DatabaseSettings, two: tuple[str, str]
) -> None:
    a, b = two
    url = db_settings.database_url
    with psycopg.connect(url) as writer:
        writer.execute("update items set properties = '{}' where collection_id = %s", (b,))
        with pytest.raises(psycopg.errors.RaiseException):
            with writer.transaction():
                writer.execute(_NEW_ITEM, ("sp", a))
                writer.execute("do $$ begin raise exception 'undo'; end $$")
        assert (_pending(url, a), _pending(url, b)) == (0, 1)
        writer.execute(_NEW_ITEM, ("again", a))  # declared anew
        assert _pending(url, a) == 1


# -- publishes -----------------------------------------------------------------------------


def _wait_for(url: str, query: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as c:
        while time.monotonic() < deadline:
            if c.execute(query).fetchone() is not None:
                return
            time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {query}")


def _in_thread(run: Path, cid: str, settings: DatabaseSettings, out: dict[str, Any], **kw: Any):
    def work() -> None:
        try:
            out["result"] = publish(run, collection_id=cid, settings=settings, progress=False, **kw)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    return t


@pytest.fixture
def indexed_space(tmp_path: Path, db_settings: DatabaseSettings) -> Iterator[tuple[Path, str]]:
    """A run and the collection it was published into (its space has its index)."""
    enc = "pw-" + uuid.uuid4().hex[:6]
    run = write_run(tmp_path / "run", 40, dims=8, seed=31, encoder=enc)
    cid = "pw-a-" + uuid.uuid4().hex[:6]
    first = publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert first.index_built
    yield run, cid
    with psycopg.connect(db_settings.database_url) as c:
        c.execute("delete from collections where id like 'pw-%%'")


@pytest.fixture
def paused_publish(
    indexed_space: tuple[Path, str], db_settings: DatabaseSettings, two: tuple[str, str]
) -> Iterator[str]:
    """An upsert publish into an existing collection, held in its embeddings merge (after
    its items merge) until the test ends; yields the collection."""
    run, cid = indexed_space
    url = db_settings.database_url
    out: dict[str, Any] = {}
    with psycopg.connect(url) as holder:
        holder.execute("lock table embeddings in share mode")
        thread = _in_thread(run, cid, db_settings, out, mode="upsert")
        _wait_for(
            url,
            "select 1 from pg_stat_activity where datname = current_database()"
            " and wait_event_type = 'Lock' and wait_event = 'relation'"
            " and query ilike 'insert into %embeddings%'",
        )
        try:
            yield cid
        finally:
            holder.rollback()
            thread.join(60)
    assert isinstance(out.get("result"), PublishResult), out.get("error")


def test_publish_holds_back_its_collections_feed_only(
    paused_publish: str, db_settings: DatabaseSettings, two: tuple[str, str]
) -> None:
    url = db_settings.database_url
    assert _pending(url, paused_publish) == 1
    assert [_pending(url, cid) for cid in two] == [0, 0]


def test_item_writes_into_the_collection_do_not_wait_for_its_publish(
    paused_publish: str, db_settings: DatabaseSettings
) -> None:
    """The publish locks its collection's row FOR NO KEY UPDATE: an item insert's foreign
    key check (FOR KEY SHARE) goes through (FOR UPDATE made it wait for the publish)."""
    with psycopg.connect(db_settings.database_url) as c:
        c.execute("set local lock_timeout = '2s'")
        c.execute(_NEW_ITEM, ("beside-the-publish", paused_publish))
        c.rollback()


def test_publish_into_an_indexed_space_does_not_wait_for_an_index_builder(
    indexed_space: tuple[Path, str], db_settings: DatabaseSettings
) -> None:
    """A builder of another space holds that space's merge lock exclusively from its first
    merge to its commit (catalog.publish, "The merge locks"); a publish into an indexed
    space builds nothing and finishes meanwhile."""
    run, cid = indexed_space
    url = db_settings.database_url
    with psycopg.connect(url) as c:
        row = c.execute("select space_id from collections where id = %s", (cid,)).fetchone()
    assert row is not None
    with psycopg.connect(url) as builder:
        merge_lock(builder, int(row[0]) + 1, exclusive=True)  # the next space's builder
        out: dict[str, Any] = {}
        thread = _in_thread(run, "pw-b-" + uuid.uuid4().hex[:6], db_settings, out)
        thread.join(30)
        done = not thread.is_alive()
        builder.rollback()
        thread.join(60)
    assert done, "the publish waited for the merge lock"
    result = out.get("result")
    assert isinstance(result, PublishResult), out.get("error")
    assert (result.inserted, result.index_built) == (40, False)


def test_index_builders_still_wait_for_each_other(
    tmp_path: Path, db_settings: DatabaseSettings
) -> None:
    run = write_run(tmp_path / "new", 20, dims=8, seed=32, encoder="pw-" + uuid.uuid4().hex[:6])
    url = db_settings.database_url
    with psycopg.connect(url) as builder:
        builder.execute("select pg_advisory_xact_lock(hashtext('embcat-publish-merge'))")
        out: dict[str, Any] = {}
        thread = _in_thread(run, "pw-c-" + uuid.uuid4().hex[:6], db_settings, out)
        _wait_for(
            url,
            "select 1 from pg_stat_activity where datname = current_database()"
            " and wait_event = 'advisory' and query ilike '%embcat-publish-merge%'",
        )
        builder.rollback()
        thread.join(60)
    result = out.get("result")
    assert isinstance(result, PublishResult), out.get("error")
    assert result.index_built
