from __future__ import annotations

from collections.abc import Callable

import psycopg

from catalog import migrate
from catalog.settings import DatabaseSettings

TABLES = {
    "collections",
    "items",
    "item_tombstones",
    "embedding_spaces",
    "embeddings",
    "api_keys",
    "publishes",
}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as c:
        rows = c.execute("select tablename from pg_tables where schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade_on_empty_database(make_database: Callable[..., str]) -> None:
    url = make_database(migrated=False)
    settings = DatabaseSettings(database_url=url)
    migrate.upgrade(settings)
    assert TABLES <= _tables(url)
    migrate.downgrade(settings, "base")
    assert not (TABLES & _tables(url))
    migrate.upgrade(settings)
    assert TABLES <= _tables(url)
    assert migrate.current(settings) == migrate.head_revision()


def test_upgrade_twice_changes_nothing(db_settings: DatabaseSettings) -> None:
    before = migrate.current(db_settings)
    migrate.upgrade(db_settings)
    assert migrate.current(db_settings) == before == migrate.head_revision()


def test_upgrade_gives_existing_embeddings_their_geometry_and_rebuilds_the_index(
    make_database: Callable[..., str],
) -> None:
    """Migration 0007 on a catalogue with vectors: every embedding row gets its item's
    geometry, and the space's HNSW index (dropped for the rewrite) is back, valid."""
    url = make_database(migrated=False)
    settings = DatabaseSettings(database_url=url)
    migrate.upgrade(settings, "0006")
    index = (
        "CREATE INDEX embeddings_hnsw_space_{} ON public.embeddings USING hnsw"
        " (((embedding)::halfvec(3)) halfvec_cosine_ops) WITH (m='8', ef_construction='32')"
        " WHERE (space_id = {})"
    )
    with psycopg.connect(url) as c:
        space = c.execute(
            "insert into embedding_spaces (encoder_name, encoder_version, dimensions, storage,"
            " metric) values ('m', '1', 3, 'halfvec', 'cosine') returning id"
        ).fetchone()[0]
        c.execute("insert into collections (id, stac, space_id) values ('m', '{}', %s)", (space,))
        for k in range(20):
            c.execute(
                "insert into items (collection_id, id, geometry, bbox, datetime) values"
                " ('m', %s, ST_MakePoint(%s, 1)::geometry(Point, 4326), %s, now())",
                (f"i{k}", k, [k, 1, k, 1]),
            )
            c.execute(
                "insert into embeddings (collection_id, item_id, space_id, embedding)"
                " values ('m', %s, %s, %s::halfvec)",
                (f"i{k}", space, f"[1,{k},2]"),
            )
        c.execute(index.format(space, space).replace("public.embeddings", "embeddings"))
        c.commit()
    migrate.upgrade(settings)
    with psycopg.connect(url) as c:
        differing = c.execute(
            "select count(*) from embeddings e join items i"
            " on i.collection_id = e.collection_id and i.id = e.item_id"
            " where not ST_Equals(e.geometry, i.geometry)"
        ).fetchone()[0]
        rebuilt = c.execute(
            "select pg_get_indexdef(x.indexrelid), x.indisvalid from pg_index x"
            " join pg_class c on c.oid = x.indexrelid"
            " where c.relname = %s",
            (f"embeddings_hnsw_space_{space}",),
        ).fetchall()
    assert differing == 0
    assert rebuilt == [(index.format(space, space), True)]
