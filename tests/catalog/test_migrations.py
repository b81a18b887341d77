from __future__ import annotations

import importlib.util
from collections.abc import Callable

import psycopg
import pytest

from embcat.catalog import migrate
from embcat.catalog.settings import DEFAULT_DATABASE_URL, DatabaseSettings

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


HNSW_DEF = (
    "CREATE INDEX embeddings_hnsw_space_{} ON public.embeddings USING hnsw"
    " (((embedding)::halfvec(3)) halfvec_cosine_ops) WITH (m='8', ef_construction='32')"
    " WHERE (space_id = {})"
)


def _catalogue_at_0006(url: str) -> int:
    """A database at revision 0006 with 20 items, their vectors and the space's HNSW
    index; returns the space id."""
    migrate.upgrade(DatabaseSettings(database_url=url), "0006")
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
        c.execute(HNSW_DEF.format(space, space).replace("public.embeddings", "embeddings"))
        c.commit()
    return int(space)


def _hnsw_indexes(url: str) -> list[tuple[str, bool]]:
    with psycopg.connect(url) as c:
        return c.execute(
            "select pg_get_indexdef(x.indexrelid), x.indisvalid from pg_index x"
            " join pg_class c on c.oid = x.indexrelid"
            " where c.relname like 'embeddings_hnsw_space_%'"
        ).fetchall()


def test_upgrade_gives_existing_embeddings_their_geometry_and_rebuilds_the_index(
    make_database: Callable[..., str],
) -> None:
    """Migration 0007 on a catalogue with vectors: every embedding row gets its item's
    geometry, and the space's HNSW index (dropped for the rewrite) is back, valid."""
    url = make_database(migrated=False)
    space = _catalogue_at_0006(url)
    migrate.upgrade(DatabaseSettings(database_url=url), "0016")  # 0021: partitions
    with psycopg.connect(url) as c:
        differing = c.execute(
            "select count(*) from embeddings e join items i"
            " on i.collection_id = e.collection_id and i.id = e.item_id"
            " where not ST_Equals(e.geometry, i.geometry)"
        ).fetchone()[0]
    assert differing == 0
    assert _hnsw_indexes(url) == [(HNSW_DEF.format(space, space), True)]


def test_upgrade_interrupted_before_the_index_build_builds_it_when_run_again(
    make_database: Callable[..., str],
) -> None:
    """0007's rewrite commits before the HNSW build; an upgrade stopped there (killed, out
    of disk) has dropped the index but kept its definition: the next run builds it."""
    url = make_database(migrated=False)
    space = _catalogue_at_0006(url)
    path = migrate.migrations_dir() / "versions" / "0007_embedding_geometry.py"
    spec = importlib.util.spec_from_file_location("embcat_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with psycopg.connect(url) as c:  # part one only, committed: where an interruption stops
        c.execute(module.UPGRADE)
    assert _hnsw_indexes(url) == []
    assert migrate.current(DatabaseSettings(database_url=url)) == "0006"
    migrate.upgrade(DatabaseSettings(database_url=url), "0016")
    assert _hnsw_indexes(url) == [(HNSW_DEF.format(space, space), True)]
    with psycopg.connect(url) as c:
        assert c.execute("select to_regclass('embcat_0007_hnsw')").fetchone() == (None,)


def _old_documents(url: str) -> str:
    """A catalogue at 0008 holding a collection and an item as publishes wrote them then."""
    import json

    migrate.upgrade(DatabaseSettings(database_url=url), "0008")
    cid = "old-emb"
    stac = {
        "type": "Collection", "id": cid, "description": "d", "license": "other",
        "stac_extensions": [
            "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json",
            "https://stac-extensions.github.io/mlm/v1.4.0/schema.json",
        ],
        "extent": {"spatial": {"bbox": [[0, 0, 1, 1]]},
                   "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]}},
        "emb:type": "chip", "emb:dimensions": 8, "data_type": "float32",
        "emb:chip_layout": {"layout_type": "regular_grid", "chip_size": 32, "stride": 16,
                            "grid_id": "g"},
        "processing:software": {"embcat": "0.1"}, "processing:lineage": "x",
        "mlm:name": "mosaiks",
        "links": [{"rel": "emb:source-data", "href": "/data/my scene.tif"}],
    }  # fmt: skip
    props = {
        "datetime": "2024-01-01T00:00:00Z",
        "emb:quantization": {"method": "cast", "original_dtype": "float32", "scale": 1.0,
                             "offset": 0.0},
    }  # fmt: skip
    links = [{"rel": "derived_from", "href": "/data/my scene.tif"}]
    with psycopg.connect(url) as c:
        c.execute("INSERT INTO collections (id, stac) VALUES (%s, %s)", (cid, json.dumps(stac)))
        c.execute(
            "INSERT INTO items (collection_id, id, geometry, bbox, datetime, properties, links)"
            " VALUES (%s, 'i1', ST_SetSRID(ST_MakePoint(0.5, 0.5), 4326), '{0.5,0.5,0.5,0.5}',"
            " '2024-01-01', %s, %s)",
            (cid, json.dumps(props), json.dumps(links)),
        )
    return cid


def test_upgrade_rewrites_stored_documents_as_the_schemas_want(
    make_database: Callable[..., str],
) -> None:
    url = make_database(migrated=False)
    cid = _old_documents(url)
    migrate.upgrade(DatabaseSettings(database_url=url), "0013")
    with psycopg.connect(url) as c:
        stac = c.execute("SELECT stac FROM collections WHERE id = %s", (cid,)).fetchone()[0]  # type: ignore[index]
        props, links = c.execute("SELECT properties, links FROM items").fetchone()  # type: ignore[misc]
    assert stac["emb:chip_layout"]["chip_size"] == [32, 32]
    assert stac["emb:chip_layout"]["stride"] == [16, 16]
    assert not [k for k in stac if k.startswith(("processing:", "mlm:"))]
    assert stac["providers"][0]["processing:lineage"] == "x"
    assert stac["summaries"]["emb:dimensions"] == [8]
    assert stac["links"][0]["href"] == "file:///data/my%20scene.tif"
    assert props["emb:quantization"]["scale"] == [1.0]
    assert links[0]["href"] == "file:///data/my%20scene.tif"


def test_downgrade_from_0013_restores_the_old_forms(make_database: Callable[..., str]) -> None:
    url = make_database(migrated=False)
    cid = _old_documents(url)
    settings = DatabaseSettings(database_url=url)
    migrate.upgrade(settings, "0013")
    migrate.downgrade(settings, "0008")
    with psycopg.connect(url) as c:
        stac = c.execute("SELECT stac FROM collections WHERE id = %s", (cid,)).fetchone()[0]  # type: ignore[index]
        props, links = c.execute("SELECT properties, links FROM items").fetchone()  # type: ignore[misc]
    assert stac["emb:chip_layout"]["chip_size"] == 32
    assert props["emb:quantization"]["scale"] == 1.0
    assert links[0]["href"] == "/data/my scene.tif"


def test_upgrade_to_0009_keeps_spaces_with_unknown_options(
    make_database: Callable[..., str],
) -> None:
    """Spaces registered before 0009 keep NULL options (compared on their MLM record at
    the next publish); the same encoder with recorded options is then another space, and
    a downgrade that would merge the two is refused."""
    url = make_database(migrated=False)
    settings = DatabaseSettings(database_url=url)
    migrate.upgrade(settings, "0008")
    with psycopg.connect(url) as c:
        c.execute(
            "insert into embedding_spaces (encoder_name, encoder_version, dimensions)"
            " values ('m', '1', 3)"
        )
    migrate.upgrade(settings)
    with psycopg.connect(url) as c:
        assert c.execute("select options_sha256, options from embedding_spaces").fetchall() == [
            (None, None)
        ]
        c.execute(
            "insert into embedding_spaces (encoder_name, encoder_version, dimensions,"
            " options_sha256, options) values ('m', '1', 3, %s, '{}')",
            ("a" * 64,),
        )
        c.commit()
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute(
                "insert into embedding_spaces (encoder_name, encoder_version, dimensions)"
                " values ('m', '1', 3)"
            )
    with pytest.raises(Exception, match="differ only by their encoder options"):
        migrate.downgrade(settings, "0008")
    with psycopg.connect(url) as c:
        c.execute("delete from embedding_spaces where options_sha256 is not null")
    migrate.downgrade(settings, "0008")
    assert migrate.current(settings) == "0008"


def _partitions(url: str) -> dict[str, int]:
    """The partitions of ``embeddings`` and their row counts."""
    with psycopg.connect(url) as c:
        names = [
            r[0]
            for r in c.execute(
                "select c.relname from pg_inherits h join pg_class c on c.oid = h.inhrelid"
                " where h.inhparent = 'embeddings'::regclass order by 1"
            ).fetchall()
        ]
        return {n: c.execute(f"select count(*) from {n}").fetchone()[0] for n in names}


def test_upgrade_to_0021_moves_each_space_into_its_partition_with_its_index(
    make_database: Callable[..., str],
) -> None:
    """0021 on a catalogue with vectors: the rows in the space's own partition, the
    space's index rebuilt there without the WHERE clause, and the SQL search still
    answers through it."""
    url = make_database(migrated=False)
    space = _catalogue_at_0006(url)
    settings = DatabaseSettings(database_url=url)
    migrate.upgrade(settings, "0016")
    with psycopg.connect(url) as c:
        before = c.execute("select * from embcat.similar('m', 'i3', 5)").fetchall()
    migrate.upgrade(settings)
    assert _partitions(url) == {"embeddings_default": 0, f"embeddings_space_{space}": 20}
    partition_def = (
        HNSW_DEF.format(space, space)
        .replace("ON public.embeddings ", f"ON public.embeddings_space_{space} ")
        .replace(f" WHERE (space_id = {space})", "")
    )
    assert _hnsw_indexes(url) == [(partition_def, True)]
    with psycopg.connect(url) as c:
        assert c.execute("select * from embcat.similar('m', 'i3', 5)").fetchall() == before
        assert c.execute("select count(*) from embcat.item_embeddings").fetchone() == (20,)


def test_downgrade_from_0021_restores_one_table_and_the_partial_index(
    make_database: Callable[..., str],
) -> None:
    url = make_database(migrated=False)
    space = _catalogue_at_0006(url)
    settings = DatabaseSettings(database_url=url)
    migrate.upgrade(settings)
    migrate.downgrade(settings, "0016")
    assert _partitions(url) == {}
    assert _hnsw_indexes(url) == [(HNSW_DEF.format(space, space), True)]
    with psycopg.connect(url) as c:
        assert c.execute("select count(*) from embeddings").fetchone() == (20,)
        assert c.execute("select count(*) from embcat.item_embeddings").fetchone() == (20,)
        assert len(c.execute("select * from embcat.similar('m', 'i3', 5)").fetchall()) == 5
    migrate.upgrade(settings)
    assert _partitions(url) == {"embeddings_default": 0, f"embeddings_space_{space}": 20}


def _export_order_index(url: str) -> list[str]:
    with psycopg.connect(url) as c:
        rows = c.execute(
            "select indexdef from pg_indexes where indexname = 'items_export_order_idx'"
        ).fetchall()
    return [r[0] for r in rows]


def test_upgrade_to_0022_adds_the_export_order_index_and_drops_kept_shapes(
    make_database: Callable[..., str],
) -> None:
    """0022 on a catalogue with items and a kept export shape: the btree over (collection,
    geometry, id) exists, the shape without constants is gone (the next export
    rediscovers it), and the downgrade removes both additions."""
    url = make_database(migrated=False)
    _catalogue_at_0006(url)
    settings = DatabaseSettings(database_url=url)
    migrate.upgrade(settings, "0021")
    with psycopg.connect(url) as c:
        c.execute(
            "insert into export_shapes (collection_id, seq, properties, assets)"
            " select id, 0, '[]', '{}' from collections"
        )
    migrate.upgrade(settings, "0022")
    assert _export_order_index(url) == [
        "CREATE INDEX items_export_order_idx ON public.items"
        " USING btree (collection_id, geometry, id)"
    ]
    with psycopg.connect(url) as c:
        assert c.execute("select count(*) from export_shapes").fetchone() == (0,)
    migrate.downgrade(settings, "0021")
    assert _export_order_index(url) == []


def test_alembic_config_without_settings_takes_the_code_defaults_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBCAT_DATABASE_URL", "postgresql://someone:else@192.0.2.1:6543/other")
    url = migrate.alembic_config().get_main_option("sqlalchemy.url")
    assert url == DEFAULT_DATABASE_URL
