"""Export in index order: a btree over (collection_id, geometry, id), and constant item
fields kept in the export shape (issue 18).

A whole-collection export sorts its rows along PostGIS's Hilbert curve (``ORDER BY
geometry, id``: the geometry btree operator class compares the Hilbert keys of the
bounding boxes' centres). Sorting the wide export rows (item columns + vector, ~2 KB a
row) spilled ~200 MB to disk per 100k rows at the export's 64 MB ``work_mem`` and took
longer than reading them. ``items_export_order_idx`` holds that order, so catalog/export.py
reads the items in index order and fetches each vector by the embeddings' primary key
(a nested loop keeps the order): no sort, no spill, the same rows in the same order. It
costs ~17 MB per 100k items and one btree insert per item written.

``export_shapes.details`` keeps, next to the shape, the item fields that have one value
over the whole collection (``{"properties": {name: value}, "assets": {key: {field:
value}}, "assets_everywhere": [key, ...]}``) and the Arrow types of the properties written
as nested columns (``{"types": {name: type}}``): the export writes those as constant
columns instead of extracting them from every jsonb document. The shapes kept so far
lack them and are dropped (the next export rediscovers the shape once).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01
"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE INDEX IF NOT EXISTS items_export_order_idx ON items (collection_id, geometry, id);
DELETE FROM export_shapes;
ALTER TABLE export_shapes ADD COLUMN details jsonb NOT NULL DEFAULT '{}'::jsonb;
"""
    )


def downgrade() -> None:
    op.execute(
        """
ALTER TABLE export_shapes DROP COLUMN IF EXISTS details;
DROP INDEX IF EXISTS items_export_order_idx;
"""
    )
