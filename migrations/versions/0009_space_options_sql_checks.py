"""Embedding spaces are identified by their encoder options; the SQL functions validate.

1. ``embedding_spaces`` gains ``options`` (jsonb: every encoder option that changes the
   vectors, canonical form: see ``encoders.manifest.space_options``) and
   ``options_sha256`` (sha256 of that canonical JSON). A space's identity is now
   (encoder name, version, dimensions, storage, metric, options_sha256): the same encoder
   with another seed, band list, chip size, scaling or checkpoint is another space.
   Spaces registered before this revision keep ``NULL`` in both (their options were never
   recorded as such); ``catalog.publish`` compares a run with what such a space's MLM
   hyperparameters recorded and adopts the run's options on the first publish that
   matches them (docs/hpc.md, "Embedding space identity"). ``embcat.spaces`` shows both
   columns (appended).
2. ``embcat.similar`` validates like ``embcat.similar_to_vector``: k outside 1..1000 is
   refused, an unknown collection is named as such (it said "item ... not found"), a
   collection without embeddings too. With k = 1000 it returns 1000 rows (it asked the
   search for k + 1 rows, capped at 1000, then left the item out). Both now share the
   search in ``embcat._similar_to_vector`` (internal, not part of the stable surface).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import importlib.util
import re
from pathlib import Path

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# pgvector's library loaded first, so that its settings (hnsw.*) are known (as in 0003).
LOAD_PGVECTOR = "SELECT '[1]'::vector;\n"

SPACES = r"""
ALTER TABLE embedding_spaces
    ADD COLUMN options jsonb,
    ADD COLUMN options_sha256 text CHECK (options_sha256 ~ '^[0-9a-f]{64}$');

DO $$
DECLARE
    name text;
BEGIN
    SELECT c.conname INTO name FROM pg_constraint c
    WHERE c.conrelid = 'embedding_spaces'::regclass AND c.contype = 'u'
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
           WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey))
          = ARRAY['dimensions', 'encoder_name', 'encoder_version', 'metric', 'storage'];
    IF name IS NOT NULL THEN
        EXECUTE format('ALTER TABLE embedding_spaces DROP CONSTRAINT %I', name);
    END IF;
END $$;

ALTER TABLE embedding_spaces ADD CONSTRAINT embedding_spaces_identity_key
    UNIQUE NULLS NOT DISTINCT
    (encoder_name, encoder_version, dimensions, storage, metric, options_sha256);

CREATE OR REPLACE VIEW embcat.spaces AS
SELECT s.id AS space_id, s.encoder_name, s.encoder_version, s.dimensions, s.storage,
       s.metric, s.normalized,
       coalesce(array_agg(c.id ORDER BY c.id) FILTER (WHERE c.id IS NOT NULL), '{}') AS collections,
       s.options_sha256, s.options
FROM embedding_spaces s LEFT JOIN collections c ON c.space_id = s.id
GROUP BY s.id;
"""

FUNCTIONS = r"""
DROP FUNCTION embcat.similar(text, text, integer, geometry);
DROP FUNCTION embcat.similar_to_vector(text, vector, integer, geometry);

-- Internal (both public functions call it after their own checks): the k nearest items
-- of `collection` to `v`, among those intersecting `within` when given. k may be 1001 so
-- that embcat.similar can leave its item out of 1000 results.
CREATE FUNCTION embcat._similar_to_vector(
    collection text, v vector, k integer, within geometry)
RETURNS TABLE (item_id text, distance double precision)
LANGUAGE plpgsql STABLE
SET search_path = public, pg_temp
SET hnsw.iterative_scan = 'strict_order'
SET hnsw.ef_search = '60'
SET hnsw.max_scan_tuples = '200000'
SET work_mem = '64MB'
SET jit = 'off'
SET max_parallel_workers_per_gather = '0'
AS $fn$
DECLARE
    sp embedding_spaces;
    dist text;
    bound bigint;
    matching bigint;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1001 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    SELECT s.* INTO sp FROM collections c JOIN embedding_spaces s ON s.id = c.space_id
    WHERE c.id = collection;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM collections WHERE id = collection) THEN
            RAISE EXCEPTION 'collection % does not exist', collection USING ERRCODE = 'P0002';
        END IF;
        RAISE EXCEPTION 'collection % has no embeddings', collection USING ERRCODE = '22023';
    END IF;
    IF v IS NULL OR vector_dims(v) <> sp.dimensions THEN
        RAISE EXCEPTION 'the vector has % values; the space of collection % has %',
            vector_dims(v), collection, sp.dimensions USING ERRCODE = '22023';
    END IF;
    IF within IS NOT NULL AND ST_SRID(within) <> 4326 THEN
        RAISE EXCEPTION 'within must be a geometry in EPSG:4326 (SRID 4326), got SRID %',
            ST_SRID(within) USING ERRCODE = '22023';
    END IF;
    PERFORM set_config('hnsw.ef_search', least(greatest(2 * k, 60), 1000)::text, true);
    dist := format('(e.%1$I::%2$s(%3$s)) %4$s $1::%2$s(%3$s)',
        CASE sp.storage WHEN 'halfvec' THEN 'embedding' ELSE 'embedding_f32' END,
        sp.storage, sp.dimensions,
        CASE sp.metric WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->' ELSE '<#>' END);
    IF within IS NULL THEN
        RETURN QUERY EXECUTE format(
            'SELECT e.item_id, (%1$s)::double precision FROM public.embeddings e'
            ' WHERE e.space_id = %2$s AND e.collection_id = $2 ORDER BY %1$s LIMIT $3',
            dist, sp.id)
        USING v, collection, k;
        RETURN;
    END IF;
    SELECT greatest(2000, 0.003 * greatest(reltuples, 0))::bigint INTO bound
    FROM pg_class WHERE oid = 'public.embeddings'::regclass;
    SELECT count(*) INTO matching FROM (
        SELECT 1 FROM public.embeddings e
        WHERE e.space_id = sp.id AND e.collection_id = collection
          AND ST_Intersects(e.geometry, within)
        LIMIT bound) f;
    IF matching < bound THEN  -- exact: every filtered row (OFFSET 0 keeps the index off)
        RETURN QUERY EXECUTE format(
            'SELECT f.item_id, f.d FROM (SELECT e.item_id, (%1$s)::double precision AS d'
            ' FROM public.embeddings e WHERE e.space_id = %2$s AND e.collection_id = $2'
            ' AND ST_Intersects(e.geometry, $4) OFFSET 0) f ORDER BY f.d, f.item_id LIMIT $3',
            dist, sp.id)
        USING v, collection, k, within;
    ELSE
        RETURN QUERY EXECUTE format(
            'SELECT e.item_id, (%1$s)::double precision FROM public.embeddings e'
            ' WHERE e.space_id = %2$s AND e.collection_id = $2'
            ' AND ST_Intersects(e.geometry, $4) ORDER BY %1$s LIMIT $3',
            dist, sp.id)
        USING v, collection, k, within;
    END IF;
END
$fn$;
COMMENT ON FUNCTION embcat._similar_to_vector(text, vector, integer, geometry) IS
    'internal: use embcat.similar or embcat.similar_to_vector';

-- The k nearest items of `collection` to the vector `v` (the collection's space metric),
-- among those intersecting `within` when it is given.
CREATE FUNCTION embcat.similar_to_vector(
    collection text, v vector, k integer DEFAULT 10, within geometry DEFAULT NULL)
RETURNS TABLE (item_id text, distance double precision)
LANGUAGE plpgsql STABLE
SET search_path = public, pg_temp
AS $fn$
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    RETURN QUERY SELECT s.item_id, s.distance
        FROM embcat._similar_to_vector(collection, v, k, within) s;
END
$fn$;

-- The k nearest items of `collection` to its item `item` (the item itself left out),
-- among those intersecting `within` when it is given.
CREATE FUNCTION embcat.similar(
    collection text, item text, k integer DEFAULT 10, within geometry DEFAULT NULL)
RETURNS TABLE (item_id text, distance double precision)
LANGUAGE plpgsql STABLE
SET search_path = public, pg_temp
AS $fn$
DECLARE
    sid integer;
    q vector;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    SELECT c.space_id INTO sid FROM collections c WHERE c.id = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'collection % does not exist', $1 USING ERRCODE = 'P0002';
    END IF;
    IF sid IS NULL THEN
        RAISE EXCEPTION 'collection % has no embeddings', $1 USING ERRCODE = '22023';
    END IF;
    SELECT coalesce(e.embedding_f32, e.embedding::vector) INTO q
    FROM embeddings e
    WHERE e.collection_id = $1 AND e.space_id = sid AND e.item_id = $2;
    IF q IS NULL THEN
        RAISE EXCEPTION 'item %/% not found or without an embedding',
            $1, $2 USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
        SELECT s.item_id, s.distance
        FROM embcat._similar_to_vector($1, q, k + 1, within) s
        WHERE s.item_id <> $2
        LIMIT k;
END
$fn$;

GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA embcat TO embcat_reader;
"""

SPACES_DOWN = r"""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM embedding_spaces
               GROUP BY encoder_name, encoder_version, dimensions, storage, metric
               HAVING count(*) > 1) THEN
        RAISE EXCEPTION 'cannot downgrade below 0009: spaces differ only by their encoder'
            ' options (delete the collections of all but one of them first)';
    END IF;
END $$;
DROP VIEW embcat.spaces;
CREATE VIEW embcat.spaces AS
SELECT s.id AS space_id, s.encoder_name, s.encoder_version, s.dimensions, s.storage,
       s.metric, s.normalized,
       coalesce(array_agg(c.id ORDER BY c.id) FILTER (WHERE c.id IS NOT NULL), '{}') AS collections
FROM embedding_spaces s LEFT JOIN collections c ON c.space_id = s.id
GROUP BY s.id;
GRANT SELECT ON embcat.spaces TO embcat_reader;
ALTER TABLE embedding_spaces DROP CONSTRAINT embedding_spaces_identity_key;
ALTER TABLE embedding_spaces ADD CONSTRAINT embedding_spaces_encoder_name_encoder_version_dimensions_st_key
    UNIQUE (encoder_name, encoder_version, dimensions, storage, metric);
ALTER TABLE embedding_spaces DROP COLUMN options_sha256, DROP COLUMN options;
"""


def _functions_of_0008() -> str:
    """The two functions as migration 0008 created them (its text is the one definition)."""
    path = Path(__file__).with_name("0008_sql_similar_within.py")
    spec = importlib.util.spec_from_file_location("embcat_migration_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = re.findall(r"^CREATE FUNCTION .*?^\$fn\$;$", module.UPGRADE, flags=re.S | re.M)
    assert len(found) == 2, "migration 0008 no longer holds the two functions"
    return "\n".join(found)


def upgrade() -> None:
    op.execute(LOAD_PGVECTOR + SPACES + FUNCTIONS)


def downgrade() -> None:
    op.execute(
        LOAD_PGVECTOR
        + "DROP FUNCTION embcat.similar(text, text, integer, geometry);"
        " DROP FUNCTION embcat.similar_to_vector(text, vector, integer, geometry);"
        " DROP FUNCTION embcat._similar_to_vector(text, vector, integer, geometry);\n"
        + _functions_of_0008()
        + "\nGRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA embcat TO embcat_reader;\n"
        + SPACES_DOWN
    )
