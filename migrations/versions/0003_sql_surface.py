"""SQL surface for psql users: schema ``embcat`` (view + kNN functions), role ``embcat_reader``.

Stable objects (documented in docs/sql.md):
- ``embcat.item_embeddings``: one row per item and space with collection_id, item_id,
  geometry, datetime (+ start/end), properties, space_id, dimensions, metric and the
  vector as ``vector`` (halfvec values widened; read-only view).
- ``embcat.spaces``: the embedding spaces and their collections.
- ``embcat.similar(collection, item, k)`` and ``embcat.similar_to_vector(collection,
  v, k)``: the k nearest items of the collection (by the space's metric), through the
  space's HNSW index (dynamic SQL with the space's cast) with strict iterative scans.
- ``embcat_reader``: a NOLOGIN group role with USAGE/SELECT/EXECUTE only. Roles are
  cluster-wide, so the role is created only if absent, and downgrade revokes this
  database's grants but never drops the role (other databases may use it).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'embcat_reader') THEN
        CREATE ROLE embcat_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created concurrently by a migration of another database of the cluster
END $$;

-- Load pgvector's library so that its settings (hnsw.*) are known, not placeholders that
-- only a superuser may attach to a function.
SELECT '[1]'::vector;

CREATE SCHEMA embcat;
COMMENT ON SCHEMA embcat IS 'embcat read-only SQL surface (views and similarity functions)';

CREATE VIEW embcat.spaces AS
SELECT s.id AS space_id, s.encoder_name, s.encoder_version, s.dimensions, s.storage,
       s.metric, s.normalized,
       coalesce(array_agg(c.id ORDER BY c.id) FILTER (WHERE c.id IS NOT NULL), '{}') AS collections
FROM embedding_spaces s LEFT JOIN collections c ON c.space_id = s.id
GROUP BY s.id;

CREATE VIEW embcat.item_embeddings AS
SELECT e.collection_id, e.item_id, i.geometry, i.datetime, i.start_datetime, i.end_datetime,
       i.properties, e.space_id, s.dimensions, s.metric,
       coalesce(e.embedding_f32, e.embedding::vector) AS embedding
FROM embeddings e
JOIN items i ON i.collection_id = e.collection_id AND i.id = e.item_id
JOIN embedding_spaces s ON s.id = e.space_id;
COMMENT ON VIEW embcat.item_embeddings IS
    'One row per item and embedding space; the vector widened to vector (float32).';

-- The k nearest items of `collection` to the vector `v` (the collection's space metric).
CREATE FUNCTION embcat.similar_to_vector(collection text, v vector, k integer DEFAULT 10)
RETURNS TABLE (item_id text, distance double precision)
LANGUAGE plpgsql STABLE
SET search_path = public, pg_temp
SET hnsw.iterative_scan = 'strict_order'
SET hnsw.ef_search = '100'
SET hnsw.max_scan_tuples = '200000'
SET jit = 'off'
SET max_parallel_workers_per_gather = '0'
AS $fn$
DECLARE
    sp embedding_spaces;
    col text;
    op text;
BEGIN
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
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    PERFORM set_config('hnsw.ef_search', least(greatest(2 * k, 100), 1000)::text, true);
    col := CASE sp.storage WHEN 'halfvec' THEN 'embedding' ELSE 'embedding_f32' END;
    op := CASE sp.metric WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->' ELSE '<#>' END;
    RETURN QUERY EXECUTE format(
        'SELECT e.item_id, ((e.%1$I::%2$s(%3$s)) %4$s $1::%2$s(%3$s))::double precision'
        ' FROM public.embeddings e WHERE e.space_id = %5$s AND e.collection_id = $2'
        ' ORDER BY (e.%1$I::%2$s(%3$s)) %4$s $1::%2$s(%3$s) LIMIT $3',
        col, sp.storage, sp.dimensions, op, sp.id)
    USING v, collection, k;
END
$fn$;

-- The k nearest items of `collection` to its item `item` (the item itself left out).
CREATE FUNCTION embcat.similar(collection text, item text, k integer DEFAULT 10)
RETURNS TABLE (item_id text, distance double precision)
LANGUAGE plpgsql STABLE
SET search_path = public, pg_temp
AS $fn$
DECLARE
    q vector;
BEGIN
    SELECT coalesce(e.embedding_f32, e.embedding::vector) INTO q
    FROM collections c JOIN embeddings e
      ON e.collection_id = c.id AND e.space_id = c.space_id
    WHERE c.id = $1 AND e.item_id = $2;
    IF q IS NULL THEN
        RAISE EXCEPTION 'item %/% not found or without an embedding',
            $1, $2 USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
        SELECT s.item_id, s.distance
        FROM embcat.similar_to_vector($1, q, least(k + 1, 1000)) s
        WHERE s.item_id <> $2
        LIMIT k;
END
$fn$;

GRANT USAGE ON SCHEMA embcat TO embcat_reader;
GRANT USAGE ON SCHEMA public TO embcat_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA embcat TO embcat_reader;
GRANT SELECT ON collections, items, item_tombstones, embedding_spaces, embeddings
    TO embcat_reader;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA embcat TO embcat_reader;
"""

DOWNGRADE = r"""
DROP SCHEMA IF EXISTS embcat CASCADE;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'embcat_reader') THEN
        REVOKE ALL ON collections, items, item_tombstones, embedding_spaces, embeddings
            FROM embcat_reader;
        REVOKE USAGE ON SCHEMA public FROM embcat_reader;
    END IF;
END $$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
