"""start_datetime / end_datetime indexes only over items that have them.

Chips (and most EO items) carry a single ``datetime``: their ``start_datetime`` and
``end_datetime`` are NULL, yet the full indexes took an entry per item, two index
insertions per published row for nothing. The range filter (``start_datetime <= t``,
``end_datetime >= t``) uses strict operators, which imply ``IS NOT NULL``, so the planner
still uses the partial indexes for it; only ``sortby`` on these fields sorts without an
index.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
DROP INDEX items_start_datetime_idx;
DROP INDEX items_end_datetime_idx;
CREATE INDEX items_start_datetime_idx ON items (start_datetime) WHERE start_datetime IS NOT NULL;
CREATE INDEX items_end_datetime_idx ON items (end_datetime) WHERE end_datetime IS NOT NULL;
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP INDEX items_start_datetime_idx;
DROP INDEX items_end_datetime_idx;
CREATE INDEX items_start_datetime_idx ON items (start_datetime);
CREATE INDEX items_end_datetime_idx ON items (end_datetime);
"""
    )
