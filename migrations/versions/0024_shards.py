"""Shards: a space's partition can live on other PostgreSQL servers (docs/scaling.md §6).

PostgreSQL does not let a foreign table join a partition tree whose parent has a unique
index or foreign keys. So the primary key and both foreign keys of ``embeddings`` move
from the parent down to each local partition (``embcat.add_partition_keys``; the key holds
the partition key ``space_id`` and a space is one partition, so per-partition uniqueness
is the same rule). A shard's table keeps its own primary key; the ``ON DELETE CASCADE``
from ``items`` that foreign rows cannot carry is kept by a statement trigger on ``items``
(``embcat.delete_sharded_embeddings``).

Metadata: ``shards`` (a name per shard server; its postgres_fdw server
``embcat_shard_<name>`` and user mapping hold where and how to connect) and
``shard_placements`` (which hash remainder of which space each shard holds).

``embcat.shard_ranked(space, names, values, query)`` runs one ranking query on every shard
of a space at once (dblink's asynchronous queries over the shards' foreign servers),
each shard first setting the given per-request settings (``hnsw.ef_search``,
``ivfflat.probes``, iterative scans, ...) for its own transaction
(``embcat_shard.ranked`` on the shard, installed by ``embcat shard add``); the
caller merges the shards' top-k in SQL. postgres_fdw alone cannot do this: it forwards no
settings to the remote sessions.

The upgrade rebuilds each partition's primary key (one index build per space) and checks
its foreign keys (one join each). The downgrade refuses while any space is sharded.

Revision ID: 0024
Revises: 0026
Create Date: 2026-12-01
"""

from alembic import op

revision = "0024"
down_revision = "0026"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION embcat.add_partition_keys(part text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT %I PRIMARY KEY'
                   ' (collection_id, item_id, space_id)', part, part || '_pkey');
    EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT %I FOREIGN KEY (collection_id, item_id)'
                   ' REFERENCES public.items (collection_id, id) ON DELETE CASCADE',
                   part, part || '_item_fkey');
    EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT %I FOREIGN KEY (space_id)'
                   ' REFERENCES public.embedding_spaces (id) ON DELETE RESTRICT',
                   part, part || '_space_fkey');
END $fn$;
COMMENT ON FUNCTION embcat.add_partition_keys(text) IS
    'The primary key and foreign keys of a local partition of embeddings (migration 0024).';

ALTER TABLE public.embeddings DROP CONSTRAINT embeddings_collection_id_item_id_fkey;
ALTER TABLE public.embeddings DROP CONSTRAINT embeddings_space_id_fkey;
ALTER TABLE public.embeddings DROP CONSTRAINT embeddings_pkey;

DO $$
DECLARE
    r record;
BEGIN
    PERFORM set_config('maintenance_work_mem', '1GB', true);
    FOR r IN SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
             WHERE h.inhparent = 'public.embeddings'::regclass AND c.relkind = 'r'
             ORDER BY c.relname LOOP
        PERFORM embcat.add_partition_keys(r.relname);
    END LOOP;
END $$;

CREATE TABLE public.shards (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    added_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.shards IS
    'Shard servers; each one''s postgres_fdw server is embcat_shard_<name> (embcat shard add).';

CREATE TABLE public.shard_placements (
    space_id    integer NOT NULL REFERENCES public.embedding_spaces (id) ON DELETE RESTRICT,
    modulus     integer NOT NULL CHECK (modulus > 0),
    remainder   integer NOT NULL CHECK (remainder >= 0 AND remainder < modulus),
    shard       text NOT NULL REFERENCES public.shards (name) ON DELETE RESTRICT,
    placed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (space_id, remainder)
);
COMMENT ON TABLE public.shard_placements IS
    'Which shard holds which hash remainder (of item_id) of a space''s partition.';
GRANT SELECT ON public.shards, public.shard_placements TO embcat_reader;

-- Foreign rows carry no foreign key: deleting items deletes their sharded embeddings.
CREATE FUNCTION embcat.delete_sharded_embeddings() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    s integer;
BEGIN
    FOR s IN SELECT DISTINCT space_id FROM public.shard_placements LOOP
        EXECUTE format('DELETE FROM public.embeddings_space_%s e USING old_items o'
                       ' WHERE e.collection_id = o.collection_id AND e.item_id = o.id', s);
    END LOOP;
    RETURN NULL;
END $fn$;
CREATE TRIGGER items_delete_sharded_embeddings AFTER DELETE ON public.items
    REFERENCING OLD TABLE AS old_items
    FOR EACH STATEMENT EXECUTE FUNCTION embcat.delete_sharded_embeddings();

CREATE FUNCTION embcat.shard_ranked(space integer, names text[], vals text[], query text)
RETURNS TABLE (collection_id text, item_id text, d double precision)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    conns text[];
    c text;
    remote text := format('select * from embcat_shard.ranked(%L::text[], %L::text[], %L)',
                          names, vals, query);
BEGIN
    SELECT array_agg('embcat_shard_' || p.shard ORDER BY p.remainder) INTO conns
    FROM public.shard_placements p WHERE p.space_id = space;
    IF conns IS NULL THEN
        RAISE EXCEPTION 'space % has no shards', space;
    END IF;
    BEGIN
        FOREACH c IN ARRAY conns LOOP
            IF c = ANY(coalesce(dblink_get_connections(), '{}')) AND dblink_is_busy(c) = 1 THEN
                PERFORM dblink_disconnect(c);  -- a query cancelled half-way left it busy
            END IF;
            IF NOT c = ANY(coalesce(dblink_get_connections(), '{}')) THEN
                PERFORM dblink_connect(c, c);  -- the foreign server and its user mapping
            END IF;
            PERFORM dblink_send_query(c, remote);  -- every shard starts before any is read
        END LOOP;
        FOREACH c IN ARRAY conns LOOP
            RETURN QUERY SELECT * FROM dblink_get_result(c)
                AS t(collection_id text, item_id text, d double precision);
            PERFORM * FROM dblink_get_result(c) AS t(collection_id text, item_id text,
                                                     d double precision);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        FOREACH c IN ARRAY conns LOOP
            IF c = ANY(coalesce(dblink_get_connections(), '{}')) THEN
                PERFORM dblink_disconnect(c);
            END IF;
        END LOOP;
        RAISE;
    END;
END $fn$;
COMMENT ON FUNCTION embcat.shard_ranked(integer, text[], text[], text) IS
    'Run a ranking query on every shard of a space with the given settings (migration 0024).';
REVOKE ALL ON FUNCTION embcat.shard_ranked(integer, text[], text[], text) FROM PUBLIC;
"""

DOWNGRADE = r"""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.shard_placements) THEN
        RAISE EXCEPTION 'spaces are placed on shards: move them back (embcat shard unplace) first';
    END IF;
END $$;
DROP FUNCTION embcat.shard_ranked(integer, text[], text[], text);
DROP TRIGGER items_delete_sharded_embeddings ON public.items;
DROP FUNCTION embcat.delete_sharded_embeddings();
DROP TABLE public.shard_placements;
DROP TABLE public.shards;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
             WHERE h.inhparent = 'public.embeddings'::regclass AND c.relkind = 'r' LOOP
        EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT %I', r.relname, r.relname || '_item_fkey');
        EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT %I', r.relname, r.relname || '_space_fkey');
        EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT %I', r.relname, r.relname || '_pkey');
    END LOOP;
END $$;
ALTER TABLE public.embeddings ADD CONSTRAINT embeddings_pkey
    PRIMARY KEY (collection_id, item_id, space_id);
ALTER TABLE public.embeddings ADD CONSTRAINT embeddings_collection_id_item_id_fkey
    FOREIGN KEY (collection_id, item_id) REFERENCES public.items (collection_id, id)
    ON DELETE CASCADE;
ALTER TABLE public.embeddings ADD CONSTRAINT embeddings_space_id_fkey
    FOREIGN KEY (space_id) REFERENCES public.embedding_spaces (id) ON DELETE RESTRICT;
DROP FUNCTION embcat.add_partition_keys(text);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
