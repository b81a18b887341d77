"""catalog.store.vectors: one item's vector and a collection's item extent, on a real database."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from vectorgen import load_collection

from embcat.catalog.errors import InvalidInput, NotFound
from embcat.catalog.store.vectors import item_extent, item_vector


def _vectors(n: int = 3, dims: int = 8) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, dims)).astype(np.float32)


def test_item_vector_returns_the_stored_values_and_the_asset_checksum(
    conn: psycopg.Connection,
) -> None:
    vectors = _vectors()
    load_collection(conn, "sv-read", vectors, ids=["a", "b", "c"], build_index=False)
    values, checksum = item_vector(conn, "sv-read", "b")
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, vectors[1], rtol=1e-3, atol=1e-3)
    stored = conn.execute(
        "select assets -> 'embeddings' ->> 'file:checksum' from items"
        " where collection_id = 'sv-read' and id = 'b'"
    ).fetchone()
    assert stored is not None and checksum == stored[0]


def test_item_vector_of_an_unknown_collection_is_not_found(conn: psycopg.Connection) -> None:
    with pytest.raises(NotFound, match=r"^collection 'sv-none' does not exist$"):
        item_vector(conn, "sv-none", "a")


def test_item_vector_of_an_unknown_item_names_item_and_collection(
    conn: psycopg.Connection,
) -> None:
    load_collection(conn, "sv-item", _vectors(), ids=["a", "b", "c"], build_index=False)
    with pytest.raises(
        NotFound, match=r"^item 'zz' of collection 'sv-item' does not exist or has no vector$"
    ):
        item_vector(conn, "sv-item", "zz")


def test_item_extent_is_the_bounding_box_of_the_items(conn: psycopg.Connection) -> None:
    points = np.array([[1.0, 2.0], [3.5, -1.0], [2.0, 4.25]])
    load_collection(conn, "sv-extent", _vectors(), points, build_index=False)
    assert item_extent(conn, "sv-extent") == (1.0, -1.0, 3.5, 4.25)


def test_item_extent_of_a_collection_without_items_is_invalid_input(
    conn: psycopg.Connection,
) -> None:
    with pytest.raises(InvalidInput, match=r"^collection 'sv-empty' has no items to render$"):
        item_extent(conn, "sv-empty")
