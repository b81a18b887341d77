"""Index kinds per embedding space; the SQL functions search through the space's kind.

``embedding_spaces`` gains:
- ``index_kind``: ``hnsw-halfvec`` (HNSW over the stored vectors, as before: every
  existing space keeps it), ``ivfflat-bit`` or ``hnsw-bit`` (IVFFlat / HNSW over the sign
  bits of the centred vector, ``binary_quantize(e - center)::bit(d)`` (cosine spaces:
  ``l2_normalize(e) - center``), with the candidates
  re-ranked by the exact distance on the stored vector). New spaces get the kind the
  application asks for (``catalog.spaces.default_kind``: by default ivfflat-bit from 256
  dimensions).
- ``index_center``: the space's mean vector (cosine: of the unit vectors) at the last build of a binary index (the
  constant in the index expression; NULL until one is built).
- ``index_params``: the build parameters (m, ef_construction / lists) of the last build.

``embcat._similar_to_vector`` (the search behind ``embcat.similar`` and
``embcat.similar_to_vector``, migration 0009) reads the kind: for the binary kinds it over-fetches
``max(300, 10·k)`` candidates by Hamming distance (IVFFlat: 10 probes, relaxed iterative
scans; HNSW: ef_search = the candidate count, strict iterative scans) and re-ranks them
exactly; the estimate-then-exact rule for an area is the same for every kind, with the
bound raised to sqrt(candidates x N) rows for the binary kinds (a filtered scan must find
its candidates, not k rows).
``embcat.spaces`` shows the kind.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

LOAD_PGVECTOR = "SELECT '[1]'::vector;\n"

UPGRADE = r"""
ALTER TABLE embedding_spaces
    ADD COLUMN index_kind text NOT NULL DEFAULT 'hnsw-halfvec'
        CHECK (index_kind IN ('hnsw-halfvec', 'ivfflat-bit', 'hnsw-bit')),
    ADD COLUMN index_center real[],
    ADD COLUMN index_params jsonb NOT NULL DEFAULT '{}'::jsonb;
COMMENT ON COLUMN embedding_spaces.index_kind IS
    'Similarity index of the space: hnsw-halfvec, ivfflat-bit or hnsw-bit (catalog.spaces).';
COMMENT ON COLUMN embedding_spaces.index_center IS
    'Mean vector subtracted before binary quantisation (binary index kinds).';

CREATE OR REPLACE VIEW embcat.spaces AS
SELECT s.id AS space_id, s.encoder_name, s.encoder_version, s.dimensions, s.storage,
       s.metric, s.normalized,
       coalesce(array_agg(c.id ORDER BY c.id) FILTER (WHERE c.id IS NOT NULL), '{}') AS collections,
       s.options_sha256, s.options, s.index_kind
FROM embedding_spaces s LEFT JOIN collections c ON c.space_id = s.id
GROUP BY s.id;

-- the internal search both public functions call (migration 0009), now by the kind
CREATE OR REPLACE FUNCTION embcat._similar_to_vector(
    collection text, v vector, k integer, within geometry)
RETURNS TABLE (item_id text, distance double precision)
LANGUAGE plpgsql STABLE
SET search_path = public, pg_temp
SET hnsw.iterative_scan = 'strict_order'
SET hnsw.ef_search = '60'
SET hnsw.max_scan_tuples = '200000'
SET ivfflat.probes = '10'
SET ivfflat.iterative_scan = 'relaxed_order'
SET work_mem = '64MB'
SET jit = 'off'
SET max_parallel_workers_per_gather = '0'
AS $fn$
DECLARE
    sp embedding_spaces;
    typ text;
    dist text;
    ordering text;
    candidates integer;
    area text := '';
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
    IF k IS NULL OR k < 1 OR k > 1001 THEN  -- 1001: embcat.similar leaves its item out
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    IF within IS NOT NULL AND ST_SRID(within) <> 4326 THEN
        RAISE EXCEPTION 'within must be a geometry in EPSG:4326 (SRID 4326), got SRID %',
            ST_SRID(within) USING ERRCODE = '22023';
    END IF;
    typ := format('%s(%s)', sp.storage, sp.dimensions);
    dist := format('(e.%1$I::%2$s) %3$s $1::%2$s',
        CASE sp.storage WHEN 'halfvec' THEN 'embedding' ELSE 'embedding_f32' END, typ,
        CASE sp.metric WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->' ELSE '<#>' END);
    IF within IS NOT NULL THEN
        area := ' AND ST_Intersects(e.geometry, $4)';
        -- binary kinds need their candidates, not k rows, from a filtered index scan:
        -- exact up to sqrt(candidates * N) rows too (catalog.similarity._exact_bar)
        SELECT greatest(2000, 0.003 * greatest(reltuples, 0),
                        CASE WHEN sp.index_kind <> 'hnsw-halfvec'
                             THEN sqrt(greatest(300, 10 * k) * greatest(reltuples, 0))
                             ELSE 0 END)::bigint INTO bound
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
                '%3$s OFFSET 0) f ORDER BY f.d, f.item_id LIMIT $3',
                dist, sp.id, area)
            USING v, collection, k, within;
            RETURN;
        END IF;
    END IF;
    IF sp.index_kind = 'hnsw-halfvec' OR sp.index_center IS NULL THEN
        -- (a binary kind without a centre has no index yet: the same query, exact)
        PERFORM set_config('hnsw.ef_search', least(greatest(2 * k, 60), 1000)::text, true);
        -- (the outer sort of k rows: an HNSW scan's order is approximate)
        RETURN QUERY EXECUTE format(
            'SELECT c.item_id, c.d FROM (SELECT e.item_id, (%1$s)::double precision AS d'
            ' FROM public.embeddings e WHERE e.space_id = %2$s AND e.collection_id = $2%3$s'
            ' ORDER BY %1$s LIMIT $3) c ORDER BY c.d, c.item_id',
            dist, sp.id, area)
        USING v, collection, k, within;
        RETURN;
    END IF;
    -- binary kinds: Hamming distance of the centred sign bits (the index's expression,
    -- catalog.spaces.Space.code_sql), then the exact distance over the candidates
    candidates := greatest(300, 10 * k);
    -- (in float32: halfvec arithmetic is slow; cosine spaces: of the unit vectors, as the
    -- metric ignores the norm, unless the space is normalised)
    ordering := format(
        'binary_quantize(%5$s(%1$s) - %3$L::vector(%4$s))::bit(%4$s)'
        ' <~> binary_quantize(%5$s(%6$s) - %3$L::vector(%4$s))::bit(%4$s)',
        CASE sp.storage WHEN 'halfvec'
            THEN format('(e.embedding::halfvec(%s))::vector(%s)', sp.dimensions, sp.dimensions)
            ELSE format('e.embedding_f32::vector(%s)', sp.dimensions) END,
        typ, '[' || array_to_string(sp.index_center, ',') || ']', sp.dimensions,
        CASE WHEN sp.metric = 'cosine' AND NOT sp.normalized THEN 'l2_normalize' ELSE '' END,
        format('$1::vector(%s)', sp.dimensions));
    IF sp.index_kind = 'hnsw-bit' THEN
        PERFORM set_config('hnsw.ef_search', least(candidates, 1000)::text, true);
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT c.item_id, c.d FROM (SELECT e.item_id, (%1$s)::double precision AS d'
        ' FROM public.embeddings e WHERE e.space_id = %2$s AND e.collection_id = $2%3$s'
        ' ORDER BY %4$s LIMIT %5$s) c ORDER BY c.d, c.item_id LIMIT $3',
        dist, sp.id, area, ordering, candidates)
    USING v, collection, k, within;
END
$fn$;
"""

DOWNGRADE = r"""
DROP VIEW embcat.spaces;
CREATE VIEW embcat.spaces AS
SELECT s.id AS space_id, s.encoder_name, s.encoder_version, s.dimensions, s.storage,
       s.metric, s.normalized,
       coalesce(array_agg(c.id ORDER BY c.id) FILTER (WHERE c.id IS NOT NULL), '{}') AS collections,
       s.options_sha256, s.options
FROM embedding_spaces s LEFT JOIN collections c ON c.space_id = s.id
GROUP BY s.id;
GRANT SELECT ON embcat.spaces TO embcat_reader;
"""


def _function_of_0009() -> str:
    """``embcat._similar_to_vector`` as migration 0009 created it (its text is the one
    definition), as CREATE OR REPLACE."""
    import importlib.util
    import re
    from pathlib import Path

    path = Path(__file__).with_name("0009_space_options_sql_checks.py")
    spec = importlib.util.spec_from_file_location("embcat_migration_0009", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = re.findall(
        r"^CREATE FUNCTION embcat\._similar_to_vector\(.*?^\$fn\$;$",
        module.FUNCTIONS,
        flags=re.S | re.M,
    )
    assert len(found) == 1, "migration 0009 no longer holds embcat._similar_to_vector"
    return found[0].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute(LOAD_PGVECTOR + UPGRADE)


def downgrade() -> None:
    # Binary indexes do not survive the downgrade (0009's functions know only HNSW): they
    # are dropped; rebuild the spaces' HNSW indexes with `embcat index build` afterwards.
    op.execute(
        """DO $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                     WHERE x.indrelid = 'embeddings'::regclass
                       AND c.relname ~ '^embeddings_(ivfbit|hnswbit)_space_'
            LOOP
                EXECUTE format('DROP INDEX %I', r.relname);
            END LOOP;
        END $$;"""
    )
    op.execute(LOAD_PGVECTOR + DOWNGRADE + _function_of_0009())
    op.execute(
        "ALTER TABLE embedding_spaces DROP COLUMN index_kind, DROP COLUMN index_center,"
        " DROP COLUMN index_params"
    )
