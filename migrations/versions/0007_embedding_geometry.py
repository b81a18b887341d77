"""Each embedding row carries its item's geometry (kept in sync by triggers), GiST-indexed.

Why: a similarity search with a spatial filter (bbox or intersects, the common hybrid query
of an EO catalogue) checked each candidate of the HNSW iterative scan by joining its item
(a primary-key lookup on ``items`` per candidate: about 100 candidates per result at 1 %
selectivity), and the exact strategy for selective filters went from the items' GiST index
to each embedding by primary key. With the geometry on the embedding row, the spatial
predicate is evaluated on the tuple the scan already holds, and the exact strategy reads
``embeddings`` alone through its own GiST index (``benchmarks/README.md``, Similarity).

Kept in sync by the database, whatever writes:
- ``embeddings_fill_geometry`` (BEFORE INSERT, only when a writer leaves ``geometry``
  NULL): copies the item's geometry; a missing item is the foreign-key violation it is.
  The bulk writers (publish, mirror) supply the geometry themselves and skip it.
- ``items_sync_geometry`` (AFTER UPDATE of an item whose geometry changed): moves the
  item's embeddings with it.

Upgrading an existing catalogue rewrites every embedding row. The space HNSW indexes are
dropped first (an update would insert each new row version into the graph, one by one)
and rebuilt from their own definitions, with build memory sized from the old index, after
the rewrite has committed and ``VACUUM FULL`` has compacted the table without the old row
versions (a build in the same transaction would put every old version into the graph too:
twice the size and build time; a plain VACUUM would leave the heap at twice its size). Budget the build time of every space's index (1M x 768: about 11 minutes on 2
cores). The definitions wait in ``embcat_0007_hnsw`` until their index is built, so that
an upgrade interrupted during a build builds what is missing when it is run again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Part one, in the migration's transaction (idempotent: an interrupted upgrade runs again).
UPGRADE = r"""
CREATE TABLE IF NOT EXISTS embcat_0007_hnsw (name text PRIMARY KEY, def text, bytes bigint);
INSERT INTO embcat_0007_hnsw
SELECT c.relname, pg_get_indexdef(c.oid), pg_relation_size(c.oid)
FROM pg_index x
JOIN pg_class c ON c.oid = x.indexrelid
JOIN pg_am a ON a.oid = c.relam
WHERE x.indrelid = 'embeddings'::regclass AND a.amname = 'hnsw'
ON CONFLICT (name) DO NOTHING;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT name FROM embcat_0007_hnsw LOOP
        EXECUTE format('DROP INDEX IF EXISTS %I', r.name);
    END LOOP;
END $$;

ALTER TABLE embeddings ADD COLUMN IF NOT EXISTS geometry geometry(Geometry, 4326);
UPDATE embeddings e SET geometry = i.geometry
FROM items i
WHERE e.geometry IS NULL AND i.collection_id = e.collection_id AND i.id = e.item_id;
ALTER TABLE embeddings ALTER COLUMN geometry SET NOT NULL;
CREATE INDEX IF NOT EXISTS embeddings_geometry_idx ON embeddings USING gist (geometry);
COMMENT ON COLUMN embeddings.geometry IS
    'The item''s geometry (a copy kept in sync by triggers) for spatially filtered kNN.';

CREATE OR REPLACE FUNCTION embeddings_fill_geometry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT i.geometry INTO NEW.geometry
    FROM items i WHERE i.collection_id = NEW.collection_id AND i.id = NEW.item_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'insert or update on table "embeddings" violates foreign key constraint'
            ' "embeddings_collection_id_item_id_fkey"'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (collection_id, item_id)=(%s, %s) is not present in'
                                  ' table "items".', NEW.collection_id, NEW.item_id);
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS embeddings_fill_geometry ON embeddings;
CREATE TRIGGER embeddings_fill_geometry BEFORE INSERT ON embeddings
    FOR EACH ROW WHEN (NEW.geometry IS NULL) EXECUTE FUNCTION embeddings_fill_geometry();

CREATE OR REPLACE FUNCTION items_sync_geometry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE embeddings SET geometry = NEW.geometry
    WHERE collection_id = NEW.collection_id AND item_id = NEW.id;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS items_sync_geometry ON items;
CREATE TRIGGER items_sync_geometry AFTER UPDATE OF geometry ON items
    FOR EACH ROW WHEN (OLD.geometry IS DISTINCT FROM NEW.geometry)
    EXECUTE FUNCTION items_sync_geometry();
"""

DOWNGRADE = r"""
DROP TRIGGER items_sync_geometry ON items;
DROP FUNCTION items_sync_geometry();
DROP TRIGGER embeddings_fill_geometry ON embeddings;
DROP FUNCTION embeddings_fill_geometry();
ALTER TABLE embeddings DROP COLUMN geometry;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    # Part two, after that commits: the old row versions are dead and VACUUM FULL writes the
    # table anew without them (and rebuilds its B-tree and GiST indexes), so that the HNSW
    # builds index the live rows only. One build per statement (each is
    # atomic); a definition leaves the waiting list once its index exists.
    with op.get_context().autocommit_block():
        op.execute("VACUUM (FULL, ANALYZE) embeddings")
        op.execute("SET max_parallel_maintenance_workers = 2")
        for name, definition, size in op.get_bind().exec_driver_sql(
            "SELECT name, def, bytes FROM embcat_0007_hnsw ORDER BY name"
        ).fetchall():
            memory_mb = min(4096, max(64, int(size * 1.3) // (1 << 20) + 16))
            op.execute(f"SET maintenance_work_mem = '{memory_mb}MB'")
            op.execute(definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1))
            op.get_bind().exec_driver_sql(
                "DELETE FROM embcat_0007_hnsw WHERE name = %(name)s", {"name": name}
            )
        op.execute("RESET maintenance_work_mem")
        op.execute("RESET max_parallel_maintenance_workers")
        op.execute("DROP TABLE embcat_0007_hnsw")


def downgrade() -> None:
    op.execute(DOWNGRADE)
