"""Change feed on insert: one set-based statement trigger instead of a trigger per row.

The row-level ``items_track_insert`` trigger ran one plpgsql DELETE on ``item_tombstones``
per inserted item (~100 µs a row, a third of a bulk publish's item merge). This statement-
level trigger sees every inserted row through a transition table and clears the
tombstones of re-inserted items with one DELETE .. USING. Semantics are unchanged: an
inserted item's tombstone goes away in the same statement, updates and deletes keep their
row-level triggers (which number the change sequence row by row).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE FUNCTION items_clear_tombstones() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM item_tombstones t
     USING inserted_items n
     WHERE t.collection_id = n.collection_id AND t.item_id = n.id;
    RETURN NULL;
END $$;
DROP TRIGGER items_track_insert ON items;
CREATE TRIGGER items_track_insert AFTER INSERT ON items
    REFERENCING NEW TABLE AS inserted_items
    FOR EACH STATEMENT EXECUTE FUNCTION items_clear_tombstones();
"""
    )


def downgrade() -> None:
    op.execute(
        r"""
DROP TRIGGER items_track_insert ON items;
DROP FUNCTION items_clear_tombstones();
CREATE TRIGGER items_track_insert AFTER INSERT ON items
    FOR EACH ROW EXECUTE FUNCTION items_track_change();
"""
    )
