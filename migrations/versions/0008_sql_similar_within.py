"""SQL surface: ``embcat.similar`` and ``embcat.similar_to_vector`` take an area.

A fourth, optional argument ``within`` (a geometry in EPSG:4326) keeps the items whose
geometry intersects it, tested on the embedding rows' own copy of the geometry (migration
0007). The strategy follows the API's (``catalog.similarity``): the filtered rows are
counted through ``embeddings_geometry_idx`` up to a bound (the larger of 2,000 rows and
0.3 % of the table, as the API's defaults); below it the search is exact (every filtered
row's distance, sorted), otherwise the space's HNSW index with strict iterative scans.
Calls with three arguments are unchanged (the default is NULL: no area). ``ef_search`` is
max(2k, 60), the API's default (it was max(2k, 100): both now use one default).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import importlib.util
import re
from pathlib import Path

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# pgvector's library loaded first, so that its settings (hnsw.*) are known rather than
# placeholders that only a superuser may attach to a function (as in 0003).
LOAD_PGVECTOR = "SELECT '[1]'::vector;\n"

UPGRADE = r"""
DROP FUNCTION embcat.similar(text, text, integer);
DROP FUNCTION embcat.similar_to_vector(text, vector, integer);

-- The k nearest items of `collection` to the vector `v` (the collection's space metric),
-- among those intersecting `within` when it is given.
CREATE FUNCTION embcat.similar_to_vector(
    collection text, v vector, k integer DEFAULT 10, within geometry DEFAULT NULL)
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

-- The k nearest items of `collection` to its item `item` (the item itself left out),
-- among those intersecting `within` when it is given.
CREATE FUNCTION embcat.similar(
    collection text, item text, k integer DEFAULT 10, within geometry DEFAULT NULL)
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
        FROM embcat.similar_to_vector($1, q, least(k + 1, 1000), within) s
        WHERE s.item_id <> $2
        LIMIT k;
END
$fn$;

GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA embcat TO embcat_reader;
"""


def _functions_of_0003() -> str:
    """The two functions as migration 0003 created them (its text is the one definition)."""
    path = Path(__file__).with_name("0003_sql_surface.py")
    spec = importlib.util.spec_from_file_location("embcat_migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = re.findall(r"^CREATE FUNCTION .*?^\$fn\$;$", module.UPGRADE, flags=re.S | re.M)
    assert len(found) == 2, "migration 0003 no longer holds the two functions"
    return "\n".join(found)


def upgrade() -> None:
    op.execute(LOAD_PGVECTOR + UPGRADE)


def downgrade() -> None:
    op.execute(
        LOAD_PGVECTOR
        + "DROP FUNCTION embcat.similar(text, text, integer, geometry);"
        " DROP FUNCTION embcat.similar_to_vector(text, vector, integer, geometry);\n"
        + _functions_of_0003()
        + "\nGRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA embcat TO embcat_reader;"
    )
