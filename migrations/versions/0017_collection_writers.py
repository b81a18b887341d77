"""Collection writers: every transaction that numbers a change of a collection says so first.

The change feed (catalog/changes.py) must not hand out a high-water mark past a sequence
value that a still-open transaction may commit. It used to treat every transaction holding
a write lock on ``items`` as a writer of every collection, so one publish stalled the
feeds (and mirrors) of all collections. Now a transaction declares each collection it
writes *before* it draws a change number for it: it takes the transaction-level advisory
lock ``(WRITER_LOCK_CLASS, hashtext(collection_id))`` in shared mode (writers never wait
for each other) and records the collection in the transaction-local setting
``embcat.writing``. The feed then counts, for collection C, the open transactions that
hold a write lock on ``items`` / ``item_tombstones`` and either declared C or declared
nothing at all (a writer that bypassed these triggers still stalls every feed: safe).

The declarations live in the triggers, so every writer takes part (publish, mirror, the
transactions API, bulk items, collection deletes, psql users):

- INSERT: the row's ``change_seq`` comes from the column default, drawn before any
  trigger runs; the first row of a collection not yet declared fires a BEFORE trigger
  that declares it and draws the number again (the first draw is never committed). The
  ``WHEN`` clause keeps every later row of that collection off the trigger (no plpgsql
  call per row).
- UPDATE and DELETE: the row triggers that draw the number declare the collection first.

Every name is schema-qualified: the server role's ``"$user"`` search path would put new
functions into the ``embcat`` schema (the SQL surface), beside the ones they replace.

Both the advisory lock and the setting are undone together when a subtransaction rolls
back, and end with the transaction.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# The advisory lock's first key (catalog.changes.WRITER_LOCK_CLASS): b"embc" as an int4.
WRITER_LOCK_CLASS = 1701667427

_NOT_DECLARED = (
    "NOT coalesce({cid} = ANY (nullif(current_setting('embcat.writing', true), '')::text[]),"
    " false)"
)


def upgrade() -> None:
    op.execute(
        rf"""
CREATE FUNCTION public.embcat_declare_writer(cid text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    w text[] := nullif(current_setting('embcat.writing', true), '')::text[];
BEGIN
    IF w IS NULL OR NOT (cid = ANY (w)) THEN
        PERFORM pg_advisory_xact_lock_shared({WRITER_LOCK_CLASS}, hashtext(cid));
        PERFORM set_config('embcat.writing', array_append(coalesce(w, '{{}}'), cid)::text, true);
    END IF;
END $$;
COMMENT ON FUNCTION public.embcat_declare_writer(text) IS
    'Declare that this transaction writes changes of the collection (change feed, 0017).';

CREATE FUNCTION public.items_declare_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.embcat_declare_writer(NEW.collection_id);
    NEW.change_seq := nextval('public.item_change_seq');  -- drawn again, after the declaration
    RETURN NEW;
END $$;
CREATE TRIGGER items_declare_insert BEFORE INSERT ON public.items
    FOR EACH ROW WHEN ({_NOT_DECLARED.format(cid="NEW.collection_id")})
    EXECUTE FUNCTION public.items_declare_insert();

CREATE OR REPLACE FUNCTION public.items_track_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF {_NOT_DECLARED.format(cid="NEW.collection_id")} THEN
            PERFORM public.embcat_declare_writer(NEW.collection_id);
        END IF;
        NEW.change_seq := nextval('public.item_change_seq');
        NEW.updated_at := now();
        NEW.created_at := OLD.created_at;
        RETURN NEW;
    ELSIF TG_OP = 'INSERT' THEN
        DELETE FROM public.item_tombstones WHERE collection_id = NEW.collection_id AND item_id = NEW.id;
        RETURN NEW;
    ELSE  -- DELETE; no tombstones when the whole collection goes (cascade)
        IF NOT EXISTS (SELECT 1 FROM public.collections WHERE id = OLD.collection_id) THEN
            RETURN OLD;
        END IF;
        IF {_NOT_DECLARED.format(cid="OLD.collection_id")} THEN
            PERFORM public.embcat_declare_writer(OLD.collection_id);
        END IF;
        INSERT INTO public.item_tombstones (collection_id, item_id, change_seq)
        VALUES (OLD.collection_id, OLD.id, nextval('public.item_change_seq'))
        ON CONFLICT (collection_id, item_id)
        DO UPDATE SET change_seq = EXCLUDED.change_seq, deleted_at = now();
        RETURN OLD;
    END IF;
END $$;
"""
    )


def downgrade() -> None:
    op.execute(
        r"""
DROP TRIGGER items_declare_insert ON public.items;
DROP FUNCTION public.items_declare_insert();
CREATE OR REPLACE FUNCTION public.items_track_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        NEW.change_seq := nextval('public.item_change_seq');
        NEW.updated_at := now();
        NEW.created_at := OLD.created_at;
        RETURN NEW;
    ELSIF TG_OP = 'INSERT' THEN
        DELETE FROM public.item_tombstones WHERE collection_id = NEW.collection_id AND item_id = NEW.id;
        RETURN NEW;
    ELSE  -- DELETE; no tombstones when the whole collection goes (cascade)
        IF NOT EXISTS (SELECT 1 FROM public.collections WHERE id = OLD.collection_id) THEN
            RETURN OLD;
        END IF;
        INSERT INTO public.item_tombstones (collection_id, item_id, change_seq)
        VALUES (OLD.collection_id, OLD.id, nextval('public.item_change_seq'))
        ON CONFLICT (collection_id, item_id)
        DO UPDATE SET change_seq = EXCLUDED.change_seq, deleted_at = now();
        RETURN OLD;
    END IF;
END $$;
DROP FUNCTION public.embcat_declare_writer(text);
"""
    )
