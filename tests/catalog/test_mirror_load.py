"""Mirror loading path (issue 18): page-wise checksum verification, hrefs and datetimes
built per column, the same results as the per-row helpers."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from embcat.catalog.errors import Conflict
from embcat.catalog.mirror_rows import _href_maker, _iso_column, _Row, iso, verify
from embcat.catalog.vectors import EMBEDDINGS_ASSET, embedding_href, file_fields


def _rows(vectors: np.ndarray, storage: str = "halfvec") -> list[_Row]:
    return [
        _Row(
            id=f"r{k}",
            geometry=b"",
            bbox=[0, 0, 1, 1],
            datetime=None,
            start_datetime=None,
            end_datetime=None,
            properties={},
            assets={EMBEDDINGS_ASSET: {"href": "x", **file_fields(v, storage)}},
            links=[],
            vector=v,
        )
        for k, v in enumerate(vectors)
    ]


def test_verify_counts_every_matching_checksum() -> None:
    vectors = np.random.default_rng(1).standard_normal((20, 12)).astype(np.float32)
    assert verify(_rows(vectors), "float32", "halfvec") == 20


def test_verify_refuses_a_vector_that_does_not_match_its_checksum() -> None:
    vectors = np.random.default_rng(2).standard_normal((20, 12)).astype(np.float32)
    rows = _rows(vectors)
    rows[13].vector = rows[13].vector + 0.5
    with pytest.raises(Conflict, match="r13"):
        verify(rows, "float32", "halfvec")


def test_verify_gives_lossy_pages_new_file_fields() -> None:
    vectors = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    rows = _rows(vectors)
    for r in rows:
        r.vector = np.round(r.vector)  # as if dequantised from int8
    assert verify(rows, "int8", "halfvec") == 0
    assert rows[0].assets[EMBEDDINGS_ASSET] == {"href": "x", **file_fields(rows[0].vector)}


def test_column_wise_datetimes_match_iso() -> None:
    values = [
        dt.datetime(2024, 6, 1, 10, 30, tzinfo=dt.UTC),
        None,
        dt.datetime(1960, 1, 1, 0, 0, 0, 5, tzinfo=dt.UTC),
        dt.datetime(2024, 6, 1, 10, 30, 1, 123456, tzinfo=dt.UTC),
    ]
    table = pa.table({"datetime": pa.array(values, pa.timestamp("us", tz="UTC"))})
    assert _iso_column(table, "datetime") == [iso(v) if v else None for v in values]


@pytest.mark.parametrize("item_id", ["chip-1_2.a~b", "a b/c", "é"])
def test_href_maker_matches_embedding_href(item_id: str) -> None:
    assert _href_maker("coll x")(item_id) == embedding_href("coll x", item_id)
