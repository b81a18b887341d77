"""The mirror's column-wise page encoder (catalog.mirror_columns) gives the same item
documents as the row path (catalog.mirror.rows_from_table), on a real export of items
with awkward values: quotes and unicode in strings, objects, lists, booleans, floats,
null datetimes with start/end datetimes, ids that need percent-encoding, links with
missing fields, hrefs under the remote's base URL."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest
from pgvector.psycopg import register_vector
from vectorgen import load_collection

from embcat.catalog.errors import Conflict
from embcat.catalog.export import ExportRequest, plan_export, read_metadata, stream_export
from embcat.catalog.mirror_columns import page_documents, verify_columns
from embcat.catalog.mirror_rows import rows_from_table
from embcat.catalog.vectors import stored_values

BASE = "http://remote.example:8080"


@pytest.fixture(scope="module")
def page(database_url: str) -> Iterator[tuple[object, dict]]:
    cid = f"mcol-{uuid.uuid4().hex[:8]}"
    ids = ["a-1", "b 2/é", "c_3.x~", "d%4"]
    vectors = np.random.default_rng(4).standard_normal((4, 8)).astype(np.float32)
    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        load_collection(conn, cid, vectors, ids=ids, build_index=False)
        conn.execute(
            """update items set properties = properties || jsonb_build_object(
                 'title', 'say "hi" — ' || id, 'count', 7, 'ratio', 0.125, 'ok', true,
                 'tags', jsonb_build_array('x', 'y"z'), 'meta', jsonb_build_object('k', 1)),
               links = jsonb_build_array(
                 jsonb_build_object('rel', 'derived_from', 'href', %s || '/scenes/' || id),
                 jsonb_build_object('rel', 'license', 'href', 'https://other.example/l',
                                    'type', 'text/html', 'title', 'Licence'))
             where collection_id = %s""",
            (BASE, cid),
        )
        conn.execute(
            "update items set datetime = null, start_datetime = '2024-01-01T00:00:00Z',"
            " end_datetime = '2024-02-01T00:00:00.5Z',"
            " properties = (properties - 'datetime') || '{\"datetime\": null}'"
            " where collection_id = %s and id = 'c_3.x~'",
            (cid,),
        )
        conn.commit()
        req = ExportRequest(cid, dtype="float32", order="id")
        plan = plan_export(conn, req)
        data = b"".join(stream_export(conn, plan))
    table = pq.read_table(io.BytesIO(data))
    try:
        yield table, read_metadata(io.BytesIO(data))
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("delete from collections where id = %s", (cid,))


def test_column_documents_equal_the_row_path(page: tuple) -> None:
    table, meta = page
    rows, _ = rows_from_table(table, meta, "local coll", BASE)
    props, assets, links = (
        [json.loads(v) for v in doc.to_pylist()]
        for doc in page_documents(table, meta, "local coll", BASE)
    )
    assert props == [r.properties for r in rows]
    assert assets == [r.assets for r in rows]
    assert links == [r.links for r in rows]
    assert (
        props[2]["datetime"] is None and props[2]["end_datetime"] == "2024-02-01T00:00:00.500000Z"
    )
    assert links[0][0]["href"] == "/scenes/a-1"


def test_column_checksums_refuse_a_vector_that_does_not_match(page: tuple) -> None:
    table, meta = page
    rows, vectors = rows_from_table(table, meta, "c", BASE)
    sums = [r.assets["embeddings"]["file:checksum"] for r in rows]
    ids = [r.id for r in rows]
    stored = stored_values(vectors, "halfvec").reshape(len(rows), -1)
    assert verify_columns(ids, sums, stored) == 4
    stored[1] += 0.5
    with pytest.raises(Conflict, match="b 2/é"):
        verify_columns(ids, sums, stored)


def test_members_absent_from_some_rows_keep_every_row() -> None:
    """Rows in which every member is null keep their place ("" there): pyarrow 26's
    skip-null join drops such rows, which made a page whose items carry an asset only in
    part (chip thumbnails) undecodable."""
    import pyarrow as pa

    from embcat.catalog.mirror_columns import _skip_join

    a = pa.array([None, '"a":1', None, '"a":3'], pa.string())
    b = pa.array([None, '"b":1', None, None], pa.string())
    assert _skip_join([a, b], 4).to_pylist() == ["", '"a":1,"b":1', "", '"a":3']
