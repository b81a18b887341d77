"""Change feed: upserts and tombstones after a cursor, and the safe high-water mark."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from vectorgen import load_collection

from embcat.catalog.changes import changes_since, safe_high_water
from embcat.catalog.db import connect
from embcat.catalog.errors import InvalidInput, NotFound
from embcat.catalog.settings import DatabaseSettings


@pytest.fixture
def feed(db_settings: DatabaseSettings) -> Iterator[tuple[str, int]]:
    """A committed collection ``chg`` of 6 items and the cursor right after loading it."""
    vectors = np.random.default_rng(5).standard_normal((6, 4)).astype(np.float32)
    with connect(db_settings) as c:
        load_collection(c, "chg", vectors, encoder_name="changes-test", build_index=False)
        c.commit()
        cursor, _ = safe_high_water(c)
    assert cursor is not None
    yield "chg", cursor
    with connect(db_settings) as c:
        c.execute("delete from collections where id = 'chg'")
        c.commit()


def _all(conn: psycopg.Connection, cid: str, since: int, limit: int = 100) -> list[tuple]:
    out = []
    while True:
        page = changes_since(conn, cid, since, limit)
        out += [(c.op, c.id) for c in page.changes]
        since = page.next_cursor
        if not page.more:
            return out


def test_initial_load_lists_every_item_as_upsert(db_settings: DatabaseSettings, feed) -> None:
    with connect(db_settings) as c:
        assert _all(c, "chg", 0) == [("upsert", f"item-{k}") for k in range(6)]


def test_update_and_delete_after_the_cursor(db_settings: DatabaseSettings, feed) -> None:
    cid, cursor = feed
    with connect(db_settings) as c:
        c.execute("update items set properties = '{\"x\": 1}' where id = 'item-2'")
        c.execute("delete from items where id = 'item-4'")
        c.execute("update items set properties = '{\"x\": 2}' where id = 'item-2'")
        c.commit()
        assert _all(c, cid, cursor) == [("delete", "item-4"), ("upsert", "item-2")]


def test_pages_follow_the_next_cursor(db_settings: DatabaseSettings, feed) -> None:
    with connect(db_settings) as c:
        first = changes_since(c, "chg", 0, limit=4)
        second = changes_since(c, "chg", first.next_cursor, limit=4)
    assert first.more and len(first.changes) == 4
    assert not second.more and [x.id for x in second.changes] == ["item-4", "item-5"]
    assert second.next_cursor == second.high_water


def test_open_writer_holds_the_cursor_back(db_settings: DatabaseSettings, feed) -> None:
    cid, cursor = feed
    with connect(db_settings) as writer, connect(db_settings) as reader:
        writer.execute("update items set properties = '{\"y\": 1}' where id = 'item-1'")
        with connect(db_settings) as other:
            other.execute("update items set properties = '{\"y\": 2}' where id = 'item-0'")
            other.commit()
        held = changes_since(reader, cid, cursor)
        writer.commit()
        after = changes_since(reader, cid, cursor)
    assert (held.changes, held.next_cursor, held.pending_writers) == ([], cursor, 1)
    assert [x.id for x in after.changes] == ["item-1", "item-0"]


def test_unknown_collection_is_not_found(conn: psycopg.Connection) -> None:
    with pytest.raises(NotFound, match="nope"):
        changes_since(conn, "nope", 0)


def test_negative_cursor_is_invalid(conn: psycopg.Connection) -> None:
    with pytest.raises(InvalidInput, match="since"):
        changes_since(conn, "chg", -1)
