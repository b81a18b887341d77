"""Export shapes: the item columns an export of a collection has, kept between exports.

An export's Parquet schema (one column per property, one struct field per asset field,
each with a kind) used to be discovered by a pass over every exported jsonb document
before the first byte was sent. ``export_shapes`` keeps the shape found for a whole
collection with the collection's highest ``items.change_seq`` at that time
(``seq``); while no item of the collection has a higher ``change_seq`` (nothing was
inserted or updated since; deletes only drop keys) the shape is reused and the pass is
skipped (catalog/export.py).

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-01
"""

from alembic import op

revision = "0016"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE TABLE export_shapes (
    collection_id   text PRIMARY KEY REFERENCES collections (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,
    properties      jsonb NOT NULL,
    assets          jsonb NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS export_shapes")
