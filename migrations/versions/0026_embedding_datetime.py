"""Each embedding row carries its item's datetime, start_datetime and end_datetime.

Why (issue 17): a similarity search with a ``datetime`` filter joined ``items`` for every
candidate (an index scan probes one item per candidate; the exact strategy went from the
items' datetime index to each embedding by primary key): 31.9 ms at 1 % of 1M x 768,
against ~20 ms for the same selectivity as a bbox, which the rows answer from their own
copy of the geometry (0007). With the item's times on the row, ``catalog.filters``
renders a datetime window on ``embeddings e`` and the query needs no join.

Kept in sync by the database, whatever writes (like the geometry of 0007):
- ``embeddings_fill_datetime`` (BEFORE INSERT, when a writer leaves all three NULL):
  copies them from the item. Publish and mirror insert the embedding rows without them,
  so the trigger fills every row they write (one primary-key probe of ``items`` each);
  an item without any time stays NULL, as on the item.
- ``items_sync_datetime`` (AFTER UPDATE of an item whose times changed): moves the item's
  embedding rows with it (an upsert publish that changes an item's datetime, the
  transactions API, a mirror update).

Indexes (partitioned: one per space partition): ``embeddings_datetime_idx`` on
``(datetime)`` and ``embeddings_range_idx`` on ``(start_datetime, end_datetime) WHERE
datetime IS NULL`` (empty while items have a datetime): the exact strategy reads a
datetime window through them (a bitmap OR of the two branches of the interval test)
instead of scanning the partition. Their publish cost and query gain are in
benchmarks/README.md ("Datetime on the embedding rows").

Upgrading an existing catalogue rewrites every embedding row, as 0007 did: the space
indexes (HNSW, IVFFlat) are dropped first, the rows updated, the partitions compacted by
``VACUUM FULL``, then every space index rebuilt from its own definition (budget the build
time of each space's index). The definitions wait in ``embcat_0026_indexes`` until their
index is built, so that an interrupted upgrade builds what is missing when run again.

Revision ID: 0026
Revises: 0022
Create Date: 2026-12-01
"""

from alembic import op

revision = "0026"
down_revision = "0022"
branch_labels = None
depends_on = None

VIEW = r"""
CREATE OR REPLACE VIEW embcat.item_embeddings AS
SELECT e.collection_id, e.item_id, i.geometry, {times},
       i.properties, e.space_id, s.dimensions, s.metric,
       coalesce(e.embedding_f32, e.embedding::vector) AS embedding
FROM public.embeddings e
JOIN public.items i ON i.collection_id = e.collection_id AND i.id = e.item_id
JOIN public.embedding_spaces s ON s.id = e.space_id;
"""

UPGRADE = (
    r"""
SELECT '[1]'::vector;
CREATE TABLE IF NOT EXISTS embcat_0026_indexes (name text PRIMARY KEY, def text, bytes bigint);
INSERT INTO embcat_0026_indexes
SELECT c.relname, pg_get_indexdef(c.oid), pg_relation_size(c.oid)
FROM pg_index x
JOIN pg_class c ON c.oid = x.indexrelid
JOIN pg_am a ON a.oid = c.relam
WHERE a.amname IN ('hnsw', 'ivfflat')
  AND (x.indrelid = 'public.embeddings'::regclass
       OR x.indrelid IN (SELECT inhrelid FROM pg_inherits
                         WHERE inhparent = 'public.embeddings'::regclass))
ON CONFLICT (name) DO NOTHING;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT name FROM embcat_0026_indexes LOOP
        EXECUTE format('DROP INDEX IF EXISTS public.%I', r.name);
    END LOOP;
END $$;

ALTER TABLE public.embeddings
    ADD COLUMN IF NOT EXISTS datetime timestamptz,
    ADD COLUMN IF NOT EXISTS start_datetime timestamptz,
    ADD COLUMN IF NOT EXISTS end_datetime timestamptz;
UPDATE public.embeddings e
SET datetime = i.datetime, start_datetime = i.start_datetime, end_datetime = i.end_datetime
FROM public.items i
WHERE i.collection_id = e.collection_id AND i.id = e.item_id
  AND (i.datetime, i.start_datetime, i.end_datetime)
      IS DISTINCT FROM (e.datetime, e.start_datetime, e.end_datetime);
CREATE INDEX IF NOT EXISTS embeddings_datetime_idx ON public.embeddings (datetime);
CREATE INDEX IF NOT EXISTS embeddings_range_idx ON public.embeddings
    (start_datetime, end_datetime) WHERE datetime IS NULL;
COMMENT ON COLUMN public.embeddings.datetime IS
    'The item''s datetime (a copy kept in sync by triggers) for time-filtered kNN.';

CREATE OR REPLACE FUNCTION public.embeddings_fill_datetime() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT i.datetime, i.start_datetime, i.end_datetime
    INTO NEW.datetime, NEW.start_datetime, NEW.end_datetime
    FROM public.items i WHERE i.collection_id = NEW.collection_id AND i.id = NEW.item_id;
    RETURN NEW;  -- a missing item: the foreign key (or the geometry trigger) refuses it
END $$;
DROP TRIGGER IF EXISTS embeddings_fill_datetime ON public.embeddings;
CREATE TRIGGER embeddings_fill_datetime BEFORE INSERT ON public.embeddings
    FOR EACH ROW
    WHEN (NEW.datetime IS NULL AND NEW.start_datetime IS NULL AND NEW.end_datetime IS NULL)
    EXECUTE FUNCTION public.embeddings_fill_datetime();

CREATE OR REPLACE FUNCTION public.items_sync_datetime() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.embeddings
    SET datetime = NEW.datetime, start_datetime = NEW.start_datetime,
        end_datetime = NEW.end_datetime
    WHERE collection_id = NEW.collection_id AND item_id = NEW.id;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS items_sync_datetime ON public.items;
CREATE TRIGGER items_sync_datetime AFTER UPDATE OF datetime, start_datetime, end_datetime
    ON public.items FOR EACH ROW
    WHEN ((OLD.datetime, OLD.start_datetime, OLD.end_datetime)
          IS DISTINCT FROM (NEW.datetime, NEW.start_datetime, NEW.end_datetime))
    EXECUTE FUNCTION public.items_sync_datetime();
"""
    + VIEW.format(times="e.datetime, e.start_datetime, e.end_datetime")
)

DOWNGRADE = (
    VIEW.format(times="i.datetime, i.start_datetime, i.end_datetime")
    + r"""
DROP TRIGGER IF EXISTS items_sync_datetime ON public.items;
DROP FUNCTION IF EXISTS public.items_sync_datetime();
DROP TRIGGER IF EXISTS embeddings_fill_datetime ON public.embeddings;
DROP FUNCTION IF EXISTS public.embeddings_fill_datetime();
ALTER TABLE public.embeddings
    DROP COLUMN IF EXISTS datetime,
    DROP COLUMN IF EXISTS start_datetime,
    DROP COLUMN IF EXISTS end_datetime;
"""
)


def upgrade() -> None:
    op.execute(UPGRADE)
    # After that commits: VACUUM FULL writes each partition anew without the old row
    # versions, then the space indexes are built over the live rows only (one statement
    # each; a definition leaves the waiting list once its index exists).
    with op.get_context().autocommit_block():
        op.execute("VACUUM (FULL, ANALYZE) public.embeddings")
        op.execute("SET max_parallel_maintenance_workers = 2")
        for name, definition, size in op.get_bind().exec_driver_sql(
            "SELECT name, def, bytes FROM embcat_0026_indexes ORDER BY name"
        ).fetchall():
            memory_mb = min(4096, max(64, int(size * 1.3) // (1 << 20) + 16))
            op.execute(f"SET maintenance_work_mem = '{memory_mb}MB'")
            op.execute(definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1))
            op.get_bind().exec_driver_sql(
                "DELETE FROM embcat_0026_indexes WHERE name = %(name)s", {"name": name}
            )
        op.execute("RESET maintenance_work_mem")
        op.execute("RESET max_parallel_maintenance_workers")
        op.execute("DROP TABLE embcat_0026_indexes")


def downgrade() -> None:
    op.execute(DOWNGRADE)
