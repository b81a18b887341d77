"""Initial schema: collections, items (+ change feed), embedding spaces, embeddings, API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE EXTENSION IF NOT EXISTS vector;

-- One embedding space = encoder name + version + dimensions + storage dtype + metric.
-- Vectors of different spaces are never compared.
CREATE TABLE embedding_spaces (
    id              serial PRIMARY KEY,
    encoder_name    text NOT NULL,
    encoder_version text NOT NULL,
    dimensions      integer NOT NULL CHECK (dimensions > 0 AND dimensions <= 16000),
    storage         text NOT NULL DEFAULT 'halfvec' CHECK (storage IN ('halfvec', 'vector')),
    metric          text NOT NULL DEFAULT 'cosine' CHECK (metric IN ('cosine', 'l2', 'inner_product')),
    normalized      boolean NOT NULL DEFAULT false,
    mlm             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (encoder_name, encoder_version, dimensions, storage, metric)
);

CREATE TABLE collections (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$'),
    stac        jsonb NOT NULL,
    space_id    integer REFERENCES embedding_spaces (id) ON DELETE RESTRICT,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The change sequence orders every insert, update and delete of items (incremental sync).
CREATE SEQUENCE item_change_seq AS bigint;

CREATE TABLE items (
    collection_id   text NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    id              text NOT NULL CHECK (length(id) BETWEEN 1 AND 1024),
    geometry        geometry(Geometry, 4326) NOT NULL,
    bbox            double precision[] NOT NULL CHECK (array_length(bbox, 1) IN (4, 6)),
    datetime        timestamptz,
    start_datetime  timestamptz,
    end_datetime    timestamptz,
    properties      jsonb NOT NULL DEFAULT '{}'::jsonb,
    assets          jsonb NOT NULL DEFAULT '{}'::jsonb,
    links           jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    change_seq      bigint NOT NULL DEFAULT nextval('item_change_seq'),
    PRIMARY KEY (collection_id, id),
    CHECK (datetime IS NOT NULL OR (start_datetime IS NOT NULL AND end_datetime IS NOT NULL)),
    CHECK (start_datetime IS NULL OR end_datetime IS NULL OR start_datetime <= end_datetime)
);
ALTER SEQUENCE item_change_seq OWNED BY items.change_seq;
CREATE INDEX items_geometry_idx ON items USING gist (geometry);
CREATE INDEX items_datetime_idx ON items (datetime);
CREATE INDEX items_start_datetime_idx ON items (start_datetime);
CREATE INDEX items_end_datetime_idx ON items (end_datetime);
CREATE INDEX items_collection_datetime_idx ON items (collection_id, datetime, id);
CREATE UNIQUE INDEX items_change_seq_idx ON items (collection_id, change_seq);

-- Deleted items leave a tombstone so that mirrors learn about deletions.
CREATE TABLE item_tombstones (
    collection_id   text NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    item_id         text NOT NULL,
    change_seq      bigint NOT NULL,
    deleted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, item_id)
);
CREATE INDEX item_tombstones_seq_idx ON item_tombstones (collection_id, change_seq);

CREATE FUNCTION items_track_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        NEW.change_seq := nextval('item_change_seq');
        NEW.updated_at := now();
        NEW.created_at := OLD.created_at;
        RETURN NEW;
    ELSIF TG_OP = 'INSERT' THEN
        DELETE FROM item_tombstones WHERE collection_id = NEW.collection_id AND item_id = NEW.id;
        RETURN NEW;
    ELSE  -- DELETE; no tombstones when the whole collection goes (cascade)
        IF NOT EXISTS (SELECT 1 FROM collections WHERE id = OLD.collection_id) THEN
            RETURN OLD;
        END IF;
        INSERT INTO item_tombstones (collection_id, item_id, change_seq)
        VALUES (OLD.collection_id, OLD.id, nextval('item_change_seq'))
        ON CONFLICT (collection_id, item_id)
        DO UPDATE SET change_seq = EXCLUDED.change_seq, deleted_at = now();
        RETURN OLD;
    END IF;
END $$;
CREATE TRIGGER items_track_update BEFORE UPDATE ON items
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION items_track_change();
CREATE TRIGGER items_track_insert AFTER INSERT ON items
    FOR EACH ROW EXECUTE FUNCTION items_track_change();
CREATE TRIGGER items_track_delete AFTER DELETE ON items
    FOR EACH ROW EXECUTE FUNCTION items_track_change();

-- One row per item per space. The column is untyped so that spaces of any dimension share
-- the table; each space gets a partial HNSW expression index with the cast, e.g.
--   CREATE INDEX ... USING hnsw ((embedding::halfvec(768)) halfvec_cosine_ops)
--   WHERE space_id = 7
-- (catalog.spaces creates it). Spaces stored as float32 use embedding_f32 instead.
CREATE TABLE embeddings (
    collection_id   text NOT NULL,
    item_id         text NOT NULL,
    space_id        integer NOT NULL REFERENCES embedding_spaces (id) ON DELETE RESTRICT,
    embedding       halfvec,
    embedding_f32   vector,
    PRIMARY KEY (collection_id, item_id, space_id),
    FOREIGN KEY (collection_id, item_id) REFERENCES items (collection_id, id) ON DELETE CASCADE,
    CHECK (num_nonnulls(embedding, embedding_f32) = 1)
);
CREATE INDEX embeddings_space_idx ON embeddings (space_id);

CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    secret_hash   text NOT NULL,
    scopes        text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'admin']::text[]),
    collection_id text REFERENCES collections (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS api_keys;
DROP TABLE IF EXISTS embeddings;
DROP TABLE IF EXISTS item_tombstones;
DROP TABLE IF EXISTS items;
DROP FUNCTION IF EXISTS items_track_change();
DROP TABLE IF EXISTS collections;
DROP TABLE IF EXISTS embedding_spaces;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
