"""The publish's staging rows in PostgreSQL binary COPY form.

A staging row is what the merge (catalog.publish_merge) inserts into ``items`` and
``embeddings`` as it is: the id, the WKB geometry, the item's three documents (as
catalog.item_shape builds them), the datetime, the vector, the chip thumbnail. Batches are
encoded column-wise in the reader thread (catalog.publish_load) while the database merges
the previous chunk; no Python loop over rows other than the checksum.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embcat.catalog import imagery, pgbinary
from embcat.catalog.item_shape import ItemColumns, ItemTemplate
from embcat.catalog.publish_rows import datetime_us
from embcat.catalog.store.spaces import Space
from embcat.catalog.vectors import npy_digests

STAGE_FIELDS = 8
# The staging table's rows (a vector plus three item documents, 3-5 kB) stay inline and
# uncompressed: TOAST would compress or move them out of line on the way in, only to
# decompress them again for the merge.
TOAST_TARGET_MAX = 8160


def stage_sql(space: Space) -> str:
    """The TEMP staging table of a publish (dropped at commit)."""
    return f"""
CREATE TEMP TABLE publish_staging (
    id text, wkb bytea, properties jsonb, assets jsonb, links jsonb, datetime timestamptz,
    embedding {space.storage}, thumbnail bytea
) WITH (toast_tuple_target = {TOAST_TARGET_MAX}) ON COMMIT DROP;
ALTER TABLE publish_staging ALTER COLUMN thumbnail SET STORAGE EXTERNAL"""


def _tail_dtype(dims: int, storage: str) -> np.dtype:
    """The fixed-width end of a row: the datetime field, then the vector field."""
    return np.dtype([("l_dt", ">i4"), ("dt", ">i8"), *pgbinary.vector_fields(dims, storage)])


class RowEncoder:
    """Encodes validated record batches as binary COPY rows of ``publish_staging``."""

    def __init__(self, dims: int, storage: str, template: ItemTemplate) -> None:
        self.dims = dims
        self.storage = storage
        self.dtype = _tail_dtype(dims, storage)
        self._fields = pgbinary.field_count(STAGE_FIELDS)
        self._items = ItemColumns(template)
        self._thumbs = imagery.ThumbnailEncoder(template.href_prefix)

    def encode(self, batch: pa.RecordBatch, stored: np.ndarray) -> memoryview:
        """The batch's rows in COPY BINARY form (one contiguous buffer; the writer slices
        it into 128 kB pieces without copies)."""
        n = batch.num_rows
        us = datetime_us(batch.column("datetime"))
        tail = np.empty(n, dtype=self.dtype)
        tail["l_dt"] = 8
        tail["dt"] = pgbinary.timestamp_values(us)
        pgbinary.fill_vectors(tail, stored, self.storage)
        ids = batch.column("id").cast(pgbinary.BIN)
        wkbs = batch.column("geometry").cast(pgbinary.BIN)
        docs = self._items.documents(batch, us, npy_digests(stored))
        rows = pc.binary_join_element_wise(
            self._fields,
            pgbinary.field_lengths(ids), ids,
            pgbinary.field_lengths(wkbs), wkbs,
            *[part for doc in docs for part in pgbinary.jsonb_fields(doc)],
            pgbinary.fixed(tail.tobytes(), self.dtype.itemsize, n),
            *self._thumbs.copy_field(batch),
            b"",
        )  # fmt: skip
        return pgbinary.rows_buffer(rows)
