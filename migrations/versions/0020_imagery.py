"""Imagery next to the vectors: chip thumbnails and scene quicklooks (issue 20).

- ``item_thumbnails``: the PNG quicklook of each chip that the encode job rendered into the
  shards' optional ``thumbnail`` column, one row per item, loaded by the publish job's COPY
  (catalog/imagery.py); deleted with its item. Served at
  ``/collections/{cid}/items/{iid}/thumbnail.png`` (the item's ``thumbnail`` asset).
- ``collection_quicklooks``: a quicklook PNG of each source scene of a collection (encode
  time, recorded in the manifest), with the scene's bounds in WGS84; deleted with its
  collection. Served at ``/collections/{cid}/quicklooks/{key}.png`` (the collection's
  ``quicklook-*`` assets).

PNG bytes are stored uncompressed by PostgreSQL (``STORAGE EXTERNAL``): they are
compressed already, and pglz would try in vain on every row.

Revision ID: 0020
Revises: 0017
Create Date: 2026-12-01
"""

from alembic import op

revision = "0020"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE TABLE item_thumbnails (
    collection_id   text NOT NULL,
    item_id         text NOT NULL,
    png             bytea NOT NULL,
    PRIMARY KEY (collection_id, item_id),
    FOREIGN KEY (collection_id, item_id) REFERENCES items (collection_id, id) ON DELETE CASCADE
);
ALTER TABLE item_thumbnails ALTER COLUMN png SET STORAGE EXTERNAL;

CREATE TABLE collection_quicklooks (
    collection_id   text NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    key             text NOT NULL CHECK (key ~ '^[A-Za-z0-9._-]{1,200}$'),
    source_item     text NOT NULL,
    bbox            float8[] NOT NULL CHECK (cardinality(bbox) = 4),
    datetime        timestamptz,
    png             bytea NOT NULL,
    sha256          text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, key)
);
ALTER TABLE collection_quicklooks ALTER COLUMN png SET STORAGE EXTERNAL;
"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS collection_quicklooks; DROP TABLE IF EXISTS item_thumbnails")
