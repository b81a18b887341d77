"""Mirror state: one row per (remote catalogue, remote collection) pulled by `embcat mirror`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE TABLE mirror_state (
    remote_url          text NOT NULL,
    remote_collection   text NOT NULL,
    collection_id       text NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    -- 'initial': bulk copy in progress (resume after `after_id` with `as_of` pinned);
    -- 'incremental': follow the remote change feed from `cursor`.
    phase               text NOT NULL CHECK (phase IN ('initial', 'incremental')),
    as_of               bigint,
    after_id            text,
    cursor              bigint NOT NULL DEFAULT 0,
    dtype               text NOT NULL,
    filters             jsonb NOT NULL DEFAULT '{}'::jsonb,
    rows_total          bigint NOT NULL DEFAULT 0,
    bytes_total         bigint NOT NULL DEFAULT 0,
    started_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (remote_url, remote_collection),
    UNIQUE (collection_id)
);
"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS mirror_state")
