"""catalog.store.items: the transaction endpoints and the mirror write items through one
statement, so the same item document becomes the same row either way."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest

from embcat.catalog.errors import Conflict
from embcat.catalog.mirror_rows import _item_to_row
from embcat.catalog.mirror_write import write_page
from embcat.catalog.stac_write import insert_items, update_item, validate_item
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store.spaces import Space, get_or_create_space

ORIGIN = "https://origin.example"

# Everything an item row holds but its key and bookkeeping (change_seq, created_at, ...).
_ROW = (
    "select ST_AsEWKB(geometry), bbox, datetime, start_datetime, end_datetime,"
    " properties, assets, links from items where collection_id = %s and id = %s"
)


def _doc(dt: str = "2024-05-01T10:30:00Z", value: float = 1.5) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    x, y = (float(v) for v in rng.uniform(-10, 10, 2))
    ring = [[x, y], [x + 0.25, y], [x + 0.25, y + 0.125], [x, y + 0.125], [x, y]]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "scene-1",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [x, y, x + 0.25, y + 0.125],
        "properties": {"datetime": dt, "eo:cloud_cover": value, "tags": ["a", "b"]},
        "assets": {"data": {"href": "https://elsewhere.example/scene-1.tif", "roles": ["data"]}},
        "links": [
            {"rel": "self", "href": f"{ORIGIN}/collections/x/items/scene-1"},
            {"rel": "license", "href": "https://elsewhere.example/license"},
            {"rel": "describedby", "href": "https://elsewhere.example/doc", "type": "text/html"},
        ],
    }


@pytest.fixture
def space(conn: psycopg.Connection) -> Space:
    space = get_or_create_space(
        conn, encoder_name="item-store-test", encoder_version="1", dimensions=3
    )
    for cid in ("via-tx", "via-mirror"):
        store_collections.insert(conn, cid, {"id": cid, "type": "Collection"}, space.id)
    return space


def _mirror(conn: psycopg.Connection, space: Space, doc: dict[str, Any], *, new: bool) -> None:
    row = _item_to_row(doc, np.ones(3, np.float32), "via-mirror", ORIGIN)
    write_page(conn, "via-mirror", space, [row], insert_only=new)


def _rows(conn: psycopg.Connection) -> tuple[Any, Any]:
    return tuple(  # type: ignore[return-value]
        conn.execute(_ROW, (cid, "scene-1")).fetchone() for cid in ("via-tx", "via-mirror")
    )


def test_a_new_item_is_the_same_row_through_both_paths(
    conn: psycopg.Connection, space: Space
) -> None:
    insert_items(conn, [validate_item(_doc(), "via-tx")])
    _mirror(conn, space, _doc(), new=True)
    by_tx, by_mirror = _rows(conn)
    assert by_tx is not None and by_tx == by_mirror


def test_an_upsert_of_a_changed_item_is_the_same_row_through_both_paths(
    conn: psycopg.Connection, space: Space
) -> None:
    insert_items(conn, [validate_item(_doc(), "via-tx")])
    _mirror(conn, space, _doc(), new=True)
    changed = _doc(dt="2025-02-03T04:05:06Z", value=9.25)
    insert_items(conn, [validate_item(changed, "via-tx")], upsert=True)
    _mirror(conn, space, changed, new=False)
    by_tx, by_mirror = _rows(conn)
    assert by_tx[2].year == 2025 and by_tx == by_mirror


def test_a_replace_is_the_same_row_as_a_mirror_update(
    conn: psycopg.Connection, space: Space
) -> None:
    insert_items(conn, [validate_item(_doc(), "via-tx")])
    _mirror(conn, space, _doc(), new=True)
    changed = _doc(dt="2023-12-31T23:59:59Z", value=0.5)
    update_item(conn, validate_item(changed, "via-tx"))
    _mirror(conn, space, changed, new=False)
    by_tx, by_mirror = _rows(conn)
    assert by_tx[2].year == 2023 and by_tx == by_mirror


def test_inserting_an_existing_item_is_a_conflict(conn: psycopg.Connection, space: Space) -> None:
    insert_items(conn, [validate_item(_doc(), "via-tx")])
    with pytest.raises(Conflict):
        insert_items(conn, [validate_item(_doc(), "via-tx")])


def test_a_replace_moves_the_embedding_rows_datetime(
    conn: psycopg.Connection, space: Space
) -> None:
    _mirror(conn, space, _doc(), new=True)  # the item and its embedding row
    update_item(conn, validate_item(_doc(dt="2021-06-07T08:09:10Z"), "via-mirror"))
    row = conn.execute(
        "select e.datetime = i.datetime, extract(year from e.datetime) from embeddings e"
        " join items i on i.collection_id = e.collection_id and i.id = e.item_id"
        " where e.collection_id = 'via-mirror'"
    ).fetchone()
    assert row == (True, 2021)
