"""``embeddings`` partitioned by embedding space (LIST on ``space_id``), in place.

Each space's rows live in their own partition ``embeddings_space_<id>``; its similarity
index is a plain index on that partition (no partial index over the wide shared table),
and ANALYZE, the index build and its SHARE lock touch only that partition: building one
space's index does not block another space's publish. Queries keep reading
``embeddings`` with ``space_id = <id>`` (every search path already says so), which the
planner prunes to the one partition. ``embeddings_default`` (the DEFAULT partition)
takes rows of a space that has no partition yet (a mirror's first pages, rows written by
hand); ``catalog.spaces.ensure_partition`` moves them into the space's own partition,
under the publish merge lock, before that space's index is built. New spaces get their
partition when their first publish registers them (CREATE TABLE + ATTACH PARTITION:
readers of the other partitions are never blocked).

The upgrade rewrites every embedding row once (the partitions are filled space by space)
and rebuilds every space index from its own definition on the space's partition (budget
the build time of each space's index: at 1M x 768 an IVFFlat over bits takes well under a
minute idle, an HNSW over halfvec ~10 minutes). ``embcat._similar_to_vector`` reads the
row estimate of the space's partition instead of the (now storage-less) parent.

The downgrade puts the rows back into one table and the space indexes back as partial
indexes ``WHERE space_id = <id>``.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01
"""

import importlib.util
import re
from pathlib import Path

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

LOAD_PGVECTOR = "SELECT '[1]'::vector;\n"

VIEW = r"""
CREATE VIEW embcat.item_embeddings AS
SELECT e.collection_id, e.item_id, i.geometry, i.datetime, i.start_datetime, i.end_datetime,
       i.properties, e.space_id, s.dimensions, s.metric,
       coalesce(e.embedding_f32, e.embedding::vector) AS embedding
FROM public.embeddings e
JOIN public.items i ON i.collection_id = e.collection_id AND i.id = e.item_id
JOIN public.embedding_spaces s ON s.id = e.space_id;
COMMENT ON VIEW embcat.item_embeddings IS
    'One row per item and embedding space; the vector widened to vector (float32).';
GRANT SELECT ON embcat.item_embeddings TO embcat_reader;
"""

# What both layouts share once the new table is in place: trigger, comment, grant, view.
COMMON = (
    r"""
CREATE TRIGGER embeddings_fill_geometry BEFORE INSERT ON public.embeddings
    FOR EACH ROW WHEN (NEW.geometry IS NULL) EXECUTE FUNCTION embeddings_fill_geometry();
COMMENT ON COLUMN public.embeddings.geometry IS
    'The item''s geometry (a copy kept in sync by triggers) for spatially filtered kNN.';
GRANT SELECT ON public.embeddings TO embcat_reader;
"""
    + VIEW
)

COLUMNS = "collection_id, item_id, space_id, embedding, embedding_f32, geometry"

UPGRADE = (
    r"""
-- the space indexes as they are now (rebuilt on the partitions below)
CREATE TEMP TABLE embcat_0021_indexes ON COMMIT DROP AS
SELECT c.relname AS name, pg_get_indexdef(c.oid) AS def,
       substring(c.relname from '_space_([0-9]+)$')::int AS space_id
FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
WHERE x.indrelid = 'public.embeddings'::regclass
  AND c.relname ~ '^embeddings_(hnsw|ivfbit|hnswbit)_space_[0-9]+(_new)?$';

CREATE TABLE public.embeddings_partitioned (
    collection_id   text NOT NULL,
    item_id         text NOT NULL,
    space_id        integer NOT NULL,
    embedding       halfvec,
    embedding_f32   vector,
    geometry        geometry(Geometry, 4326) NOT NULL,
    CONSTRAINT embeddings_partitioned_pkey PRIMARY KEY (collection_id, item_id, space_id),
    CONSTRAINT embeddings_collection_id_item_id_fkey FOREIGN KEY (collection_id, item_id)
        REFERENCES items (collection_id, id) ON DELETE CASCADE,
    CONSTRAINT embeddings_space_id_fkey FOREIGN KEY (space_id)
        REFERENCES embedding_spaces (id) ON DELETE RESTRICT,
    CONSTRAINT embeddings_check CHECK (num_nonnulls(embedding, embedding_f32) = 1)
) PARTITION BY LIST (space_id);
CREATE TABLE public.embeddings_default PARTITION OF public.embeddings_partitioned DEFAULT;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id FROM embedding_spaces ORDER BY id LOOP
        -- filled as a table of its own, then attached: its primary key is built in bulk
        -- and its foreign keys checked by one join (catalog.spaces.create_partition_table)
        EXECUTE format(
            'CREATE TABLE public.embeddings_space_%s (LIKE public.embeddings_partitioned'
            ' INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', r.id);
        EXECUTE format(
            'ALTER TABLE public.embeddings_space_%s ADD CONSTRAINT embeddings_space_%s_space'
            ' CHECK (space_id = %s)', r.id, r.id, r.id);
        EXECUTE format(
            'INSERT INTO public.embeddings_space_%s (%s) SELECT %s FROM public.embeddings'
            ' WHERE space_id = %s', r.id, '"""
    + COLUMNS
    + """', '"""
    + COLUMNS
    + r"""', r.id);
        EXECUTE format(
            'ALTER TABLE public.embeddings_partitioned ATTACH PARTITION'
            ' public.embeddings_space_%s FOR VALUES IN (%s)', r.id, r.id);
    END LOOP;
END $$;

DROP VIEW embcat.item_embeddings;
DROP TABLE public.embeddings;
ALTER TABLE public.embeddings_partitioned RENAME TO embeddings;
ALTER INDEX public.embeddings_partitioned_pkey RENAME TO embeddings_pkey;
CREATE INDEX embeddings_geometry_idx ON public.embeddings USING gist (geometry);

-- each space index again, on its space's partition and without the WHERE clause
DO $$
DECLARE
    r record;
BEGIN
    PERFORM set_config('maintenance_work_mem', '1GB', true);
    FOR r IN SELECT * FROM embcat_0021_indexes ORDER BY name LOOP
        EXECUTE regexp_replace(
            regexp_replace(r.def, ' ON public\.embeddings USING ',
                           format(' ON public.embeddings_space_%s USING ', r.space_id)),
            ' WHERE \(space_id = [0-9]+\)$', '');
    END LOOP;
END $$;
"""
    + COMMON
)

DOWNGRADE = (
    r"""
CREATE TEMP TABLE embcat_0021_indexes ON COMMIT DROP AS
SELECT c.relname AS name, pg_get_indexdef(c.oid) AS def,
       substring(c.relname from '_space_([0-9]+)$')::int AS space_id,
       t.relname AS partition
FROM pg_inherits h
JOIN pg_class t ON t.oid = h.inhrelid
JOIN pg_index x ON x.indrelid = t.oid
JOIN pg_class c ON c.oid = x.indexrelid
WHERE h.inhparent = 'public.embeddings'::regclass
  AND c.relname ~ '^embeddings_(hnsw|ivfbit|hnswbit)_space_[0-9]+(_new)?$';

CREATE TABLE public.embeddings_plain (
    collection_id   text NOT NULL,
    item_id         text NOT NULL,
    space_id        integer NOT NULL,
    embedding       halfvec,
    embedding_f32   vector,
    geometry        geometry(Geometry, 4326) NOT NULL,
    CONSTRAINT embeddings_plain_pkey PRIMARY KEY (collection_id, item_id, space_id),
    CONSTRAINT embeddings_collection_id_item_id_fkey FOREIGN KEY (collection_id, item_id)
        REFERENCES items (collection_id, id) ON DELETE CASCADE,
    CONSTRAINT embeddings_space_id_fkey FOREIGN KEY (space_id)
        REFERENCES embedding_spaces (id) ON DELETE RESTRICT,
    CONSTRAINT embeddings_check CHECK (num_nonnulls(embedding, embedding_f32) = 1)
);
INSERT INTO public.embeddings_plain ("""
    + COLUMNS
    + ") SELECT "
    + COLUMNS
    + r""" FROM public.embeddings;
DROP VIEW embcat.item_embeddings;
DROP TABLE public.embeddings;
ALTER TABLE public.embeddings_plain RENAME TO embeddings;
ALTER INDEX public.embeddings_plain_pkey RENAME TO embeddings_pkey;
CREATE INDEX embeddings_space_idx ON public.embeddings (space_id);
CREATE INDEX embeddings_geometry_idx ON public.embeddings USING gist (geometry);

DO $$
DECLARE
    r record;
BEGIN
    PERFORM set_config('maintenance_work_mem', '1GB', true);
    FOR r IN SELECT * FROM embcat_0021_indexes WHERE partition <> 'embeddings_default'
             ORDER BY name LOOP
        EXECUTE regexp_replace(r.def, ' ON public\.embeddings_space_[0-9]+ USING ',
                               ' ON public.embeddings USING ')
            || format(' WHERE (space_id = %s)', r.space_id);
    END LOOP;
    -- (partial indexes on the default partition already say WHERE space_id = ...)
    FOR r IN SELECT * FROM embcat_0021_indexes WHERE partition = 'embeddings_default'
             ORDER BY name LOOP
        EXECUTE regexp_replace(r.def, ' ON public\.embeddings_default USING ',
                               ' ON public.embeddings USING ');
    END LOOP;
END $$;
"""
    + COMMON
)

# embcat._similar_to_vector reads the row estimate of the space's partition (the parent
# of a partitioned table has none of its own).
_PARENT_ESTIMATE = "FROM pg_class WHERE oid = 'public.embeddings'::regclass;"
_PARTITION_ESTIMATE = (
    "FROM pg_class WHERE oid = coalesce("
    "to_regclass(format('public.embeddings_space_%s', sp.id)),"
    " 'public.embeddings_default'::regclass);"
)


def _function_of_0014() -> str:
    """``embcat._similar_to_vector`` as migration 0014 defines it (the one text)."""
    path = Path(__file__).with_name("0014_index_kinds.py")
    spec = importlib.util.spec_from_file_location("embcat_migration_0014", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = re.findall(
        r"^CREATE OR REPLACE FUNCTION embcat\._similar_to_vector\(.*?^\$fn\$;$",
        module.UPGRADE,
        flags=re.S | re.M,
    )
    assert len(found) == 1, "migration 0014 no longer holds embcat._similar_to_vector"
    assert _PARENT_ESTIMATE in found[0]
    return str(found[0])


def upgrade() -> None:
    op.execute(LOAD_PGVECTOR + UPGRADE)
    op.execute(
        LOAD_PGVECTOR + _function_of_0014().replace(_PARENT_ESTIMATE, _PARTITION_ESTIMATE)
    )


def downgrade() -> None:
    op.execute(LOAD_PGVECTOR + _function_of_0014())
    op.execute(LOAD_PGVECTOR + DOWNGRADE)
