"""The schema's own behaviour: change sequence, tombstones, per-space HNSW index."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector
from psycopg.types.json import Jsonb

from embcat.catalog.store import space_index, spaces


def _collection(conn: psycopg.Connection, cid: str) -> None:
    conn.execute("insert into collections (id, stac) values (%s, %s)", (cid, Jsonb({"id": cid})))


def _item(conn: psycopg.Connection, cid: str, iid: str, x: float = 10.0) -> None:
    conn.execute(
        "insert into items (collection_id, id, geometry, bbox, datetime)"
        " values (%s, %s, ST_MakeEnvelope(%s, 50, %s, 51, 4326), %s, now())",
        (cid, iid, x, x + 1, [x, 50.0, x + 1, 51.0]),
    )


def _seq(conn: psycopg.Connection, cid: str, iid: str) -> int:
    row = conn.execute(
        "select change_seq from items where collection_id = %s and id = %s", (cid, iid)
    ).fetchone()
    assert row
    return int(row[0])


def test_update_moves_item_to_the_end_of_the_change_feed(conn: psycopg.Connection) -> None:
    _collection(conn, "c1")
    _item(conn, "c1", "a")
    _item(conn, "c1", "b")
    a0, b0 = _seq(conn, "c1", "a"), _seq(conn, "c1", "b")
    assert a0 < b0
    conn.execute("update items set properties = '{\"x\": 1}' where id = 'a'")
    assert _seq(conn, "c1", "a") > b0


def test_delete_leaves_tombstone_and_reinsert_clears_it(conn: psycopg.Connection) -> None:
    _collection(conn, "c2")
    _item(conn, "c2", "a")
    conn.execute("delete from items where collection_id = 'c2' and id = 'a'")
    rows = conn.execute("select item_id from item_tombstones where collection_id = 'c2'").fetchall()
    assert rows == [("a",)]
    _item(conn, "c2", "a")
    assert not conn.execute("select 1 from item_tombstones where collection_id = 'c2'").fetchall()


def test_deleting_a_collection_removes_items_without_error(conn: psycopg.Connection) -> None:
    _collection(conn, "c3")
    _item(conn, "c3", "a")
    conn.execute("delete from collections where id = 'c3'")
    assert not conn.execute("select 1 from items where collection_id = 'c3'").fetchall()


def test_item_requires_a_datetime_or_a_range(conn: psycopg.Connection) -> None:
    _collection(conn, "c4")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "insert into items (collection_id, id, geometry, bbox)"
            " values ('c4', 'x', ST_MakePoint(0, 0)::geometry(Point, 4326), '{0,0,0,0}')"
        )


def test_space_index_is_used_by_a_query_with_the_same_cast(conn: psycopg.Connection) -> None:
    _collection(conn, "c5")
    space = spaces.get_or_create_space(
        conn, encoder_name="test", encoder_version="1", dimensions=8, index_kind="hnsw-halfvec"
    )
    conn.execute("update collections set space_id = %s where id = 'c5'", (space.id,))
    rng = np.random.default_rng(0)
    for i in range(50):
        _item(conn, "c5", f"i{i}")
        conn.execute(
            "insert into embeddings (collection_id, item_id, space_id, embedding)"
            " values ('c5', %s, %s, %s)",
            (f"i{i}", space.id, HalfVector(rng.standard_normal(8))),
        )
    assert space_index.ensure_index(conn, space)
    assert not space_index.ensure_index(conn, space)  # already there: nothing to do
    # Forbid the other ways (seq scan, the plain space index + sort) so the plan shows
    # whether the ordered HNSW scan is usable with this cast and operator.
    conn.execute("set local enable_seqscan = off")
    conn.execute("set local enable_sort = off")
    q = HalfVector(rng.standard_normal(8))
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            f"explain select item_id from embeddings e where space_id = {space.id}"
            f" order by {space.vector_sql('e')} {space.distance_op} %s::halfvec(8) limit 5",
            (q,),
        ).fetchall()
    )
    assert space.index_name in plan


def test_same_space_identity_is_registered_once(conn: psycopg.Connection) -> None:
    a = spaces.get_or_create_space(conn, encoder_name="e", encoder_version="1", dimensions=4)
    b = spaces.get_or_create_space(conn, encoder_name="e", encoder_version="1", dimensions=4)
    c = spaces.get_or_create_space(conn, encoder_name="e", encoder_version="2", dimensions=4)
    assert a.id == b.id != c.id


def test_single_datetime_items_stay_out_of_the_range_indexes(conn: psycopg.Connection) -> None:
    """Chips have no start/end datetime: the partial range indexes hold only ranged items,
    and the STAC range filter (strict comparisons) can still use them."""
    _collection(conn, "r1")
    _item(conn, "r1", "chip")  # datetime only
    conn.execute(
        "insert into items (collection_id, id, geometry, bbox, start_datetime, end_datetime)"
        " values ('r1', 'ranged', ST_MakeEnvelope(0, 0, 1, 1, 4326), '{0,0,1,1}',"
        " '2024-01-01', '2024-02-01')"
    )
    conn.execute("set local enable_seqscan = off")
    conn.execute("set local enable_bitmapscan = off")
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "explain select id from items i where i.start_datetime <= '2024-01-15'"
        ).fetchall()
    )
    assert "items_start_datetime_idx" in plan
    found = conn.execute(
        "select id from items i where i.start_datetime <= '2024-01-15'"
        " and i.end_datetime >= '2024-01-10'"
    ).fetchall()
    assert found == [("ranged",)]
    defs = dict(
        conn.execute(
            "select indexname, indexdef from pg_indexes where tablename = 'items'"
            " and indexname in ('items_start_datetime_idx', 'items_end_datetime_idx')"
        ).fetchall()
    )
    assert "WHERE (start_datetime IS NOT NULL)" in defs["items_start_datetime_idx"]
    assert "WHERE (end_datetime IS NOT NULL)" in defs["items_end_datetime_idx"]


def _embedding(conn: psycopg.Connection, cid: str, iid: str, space_id: int) -> None:
    conn.execute(
        "insert into embeddings (collection_id, item_id, space_id, embedding)"
        " values (%s, %s, %s, %s)",
        (cid, iid, space_id, HalfVector(np.ones(4))),
    )


def _geometries(conn: psycopg.Connection, cid: str, iid: str) -> tuple[str, str]:
    row = conn.execute(
        "select ST_AsText(i.geometry), ST_AsText(e.geometry) from items i"
        " join embeddings e on e.collection_id = i.collection_id and e.item_id = i.id"
        " where i.collection_id = %s and i.id = %s",
        (cid, iid),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_embedding_written_without_geometry_takes_its_items(conn: psycopg.Connection) -> None:
    _collection(conn, "g1")
    space = spaces.get_or_create_space(conn, encoder_name="geo", encoder_version="1", dimensions=4)
    _item(conn, "g1", "a", x=20.0)
    _embedding(conn, "g1", "a", space.id)
    item_geometry, embedding_geometry = _geometries(conn, "g1", "a")
    assert embedding_geometry == item_geometry == "POLYGON((20 50,20 51,21 51,21 50,20 50))"


def test_moving_an_item_moves_its_embedding(conn: psycopg.Connection) -> None:
    _collection(conn, "g2")
    space = spaces.get_or_create_space(conn, encoder_name="geo", encoder_version="1", dimensions=4)
    _item(conn, "g2", "a")
    _embedding(conn, "g2", "a", space.id)
    conn.execute(
        "update items set geometry = ST_MakeEnvelope(-5, -5, -4, -4, 4326)"
        " where collection_id = 'g2' and id = 'a'"
    )
    item_geometry, embedding_geometry = _geometries(conn, "g2", "a")
    assert embedding_geometry == item_geometry == "POLYGON((-5 -5,-5 -4,-4 -4,-4 -5,-5 -5))"


def test_embedding_of_a_missing_item_is_a_foreign_key_violation(conn: psycopg.Connection) -> None:
    _collection(conn, "g3")
    space = spaces.get_or_create_space(conn, encoder_name="geo", encoder_version="1", dimensions=4)
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="not present"):
        _embedding(conn, "g3", "nowhere", space.id)
