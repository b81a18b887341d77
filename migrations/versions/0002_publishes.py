"""Publish records: one row per publish run (what, when, counts, mode, outcome).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE TABLE publishes (
    id               bigserial PRIMARY KEY,
    collection_id    text NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    manifest_sha256  text NOT NULL,
    mode             text NOT NULL CHECK (mode IN ('insert', 'upsert', 'ignore')),
    origin           text NOT NULL DEFAULT 'local',
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL DEFAULT now(),
    rows_in          bigint NOT NULL,
    inserted         bigint NOT NULL,
    updated          bigint NOT NULL,
    skipped          bigint NOT NULL,
    details          jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX publishes_collection_idx ON publishes (collection_id, finished_at DESC);
"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS publishes")
