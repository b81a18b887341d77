"""The publish job against the real database: STAC output, modes, validation, atomicity."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pystac
import pytest
import shapely
from click.testing import CliRunner
from pystac.extensions.file import FileExtension
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension
from shardgen import write_run  # tests/ is on sys.path under pytest

from embcat.catalog.errors import Conflict, InvalidInput
from embcat.catalog.item_shape import item_dict
from embcat.catalog.publish import list_publishes, publish
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.stac import source_uri
from embcat.catalog.vectors import file_fields
from embcat.cli import main


def _name() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _snapshot(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as c:
        return {
            t: c.execute(f"select count(*) from {t}").fetchone()[0]  # type: ignore[index]
            for t in ("collections", "items", "embeddings", "embedding_spaces", "publishes")
        } | {
            "seq": c.execute("select coalesce(sum(change_seq), 0) from items").fetchone()[0],  # type: ignore[index]
            "stac": c.execute("select md5(string_agg(stac::text, ',' order by id))"
                              " from collections").fetchone()[0],  # type: ignore[index]
        }  # fmt: skip


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", 40, dims=8, seed=1, encoder=_name())


def _items(url: str, cid: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return c.execute(
            "select id, ST_AsGeoJSON(geometry)::jsonb, bbox, properties, assets, links,"
            " change_seq from items where collection_id = %s order by id",
            (cid,),
        ).fetchall()


def test_publish_creates_collection_items_and_vectors(run: Path, db_settings: DatabaseSettings):
    res = publish(run, collection_id=(cid := _name()), settings=db_settings, progress=False)
    assert (res.rows, res.inserted, res.updated, res.skipped) == (40, 40, 0, 0)
    assert res.created_collection
    with psycopg.connect(db_settings.database_url) as c:
        n = c.execute(
            "select count(*) from embeddings where collection_id = %s and space_id = %s",
            (cid, res.space_id),
        ).fetchone()
        assert n == (40,)


def test_collection_has_embeddings_mlm_and_links(run: Path, db_settings: DatabaseSettings):
    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    with psycopg.connect(db_settings.database_url) as c:
        stac = c.execute("select stac from collections where id = %s", (cid,)).fetchone()[0]  # type: ignore[index]
    coll = pystac.Collection.from_dict(stac)
    assert stac["emb:type"] == "chip" and stac["emb:dimensions"] == 8
    assert stac["emb:chip_layout"]["chip_size"] == [64, 64] and stac["data_type"] == "float32"
    assert coll.item_assets["embeddings"].media_type == "application/x-npy"
    assert MLMExtension.get_schema_uri() not in coll.stac_extensions  # MLM: the emb:model item
    rels = {link["rel"]: link["href"] for link in stac["links"]}
    assert rels["emb:model"] == f"/collections/{cid}/model"
    assert rels["emb:source-data"] == "file:///data/scene-000.tif"
    assert not {"self", "root", "parent", "items"} & set(rels)
    west, south, east, north = coll.extent.spatial.bboxes[0]
    assert 14.9 < west < east < 16.0 and 48.0 < south < north < 49.0


def test_items_read_back_through_pystac(run: Path, db_settings: DatabaseSettings):
    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    iid, geom, bbox, props, assets, links, _ = _items(db_settings.database_url, cid)[0]
    item = pystac.Item.from_dict(item_dict(cid, iid, geom, bbox, props, assets, links))
    asset = item.assets["embeddings"]
    assert asset.href == f"/collections/{cid}/items/{iid}/embedding"
    assert FileExtension.ext(asset).checksum.startswith("1220")  # type: ignore[union-attr]
    assert FileExtension.ext(asset).size == 8 * 4 + 128
    assert item.datetime is not None and item.datetime.year == 2024
    assert ProjectionExtension.ext(item).code == "EPSG:32633"
    assert props["emb:runtime_parameters"]["grid_id"] == "EPSG:32633/64/64"
    assert props["processing:software"]["embcat"]
    assert [link.rel for link in item.links] == ["derived_from"]
    assert shapely.geometry.shape(geom).is_valid


def test_asset_checksum_is_that_of_the_stored_vector(run: Path, db_settings: DatabaseSettings):
    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    with psycopg.connect(db_settings.database_url) as c:
        rows = c.execute(
            "select e.embedding::text, i.assets from embeddings e join items i"
            " on i.collection_id = e.collection_id and i.id = e.item_id"
            " where e.collection_id = %s limit 5",
            (cid,),
        ).fetchall()
    for text, assets in rows:
        values = np.array([float(v) for v in text.strip("[]").split(",")], dtype=np.float32)
        expected = file_fields(values, "halfvec")
        got = {k: assets["embeddings"][k] for k in ("file:size", "file:checksum")}
        assert got == expected


def test_same_publish_twice_changes_nothing(run: Path, db_settings: DatabaseSettings):
    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    before = _items(db_settings.database_url, cid)
    again = publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert (again.inserted, again.updated, again.skipped) == (0, 0, 40)
    assert _items(db_settings.database_url, cid) == before


def test_upsert_of_the_same_run_is_a_noop(run: Path, db_settings: DatabaseSettings):
    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False, mode="upsert")
    before = _items(db_settings.database_url, cid)
    again = publish(run, collection_id=cid, settings=db_settings, progress=False, mode="upsert")
    assert (again.inserted, again.updated) == (0, 0)
    assert _items(db_settings.database_url, cid) == before


def test_upsert_with_changed_vectors_updates_items(
    tmp_path: Path, run: Path, db_settings: DatabaseSettings
):
    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    before = {r[0]: r for r in _items(db_settings.database_url, cid)}
    name = json.loads((run / "manifest.json").read_text())["encoder"]["name"]
    changed = write_run(tmp_path / "v2", 40, dims=8, seed=2, encoder=name)
    res = publish(changed, collection_id=cid, settings=db_settings, progress=False, mode="upsert")
    assert (res.inserted, res.updated) == (0, 40)
    after = {r[0]: r for r in _items(db_settings.database_url, cid)}
    some = next(iter(before))
    assert after[some][4] != before[some][4]  # new file:checksum
    assert after[some][6] > before[some][6]  # change_seq moved


def test_insert_mode_refuses_existing_ids(run: Path, db_settings: DatabaseSettings):
    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    before = _snapshot(db_settings.database_url)
    with pytest.raises(Conflict, match="already exist.*chip-00000000"):
        publish(run, collection_id=cid, settings=db_settings, progress=False, mode="insert")
    assert _snapshot(db_settings.database_url) == before


def test_other_embedding_space_is_refused(tmp_path: Path, run: Path, db_settings: DatabaseSettings):
    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    other = write_run(tmp_path / "other", 10, dims=12, seed=3, encoder=_name())
    with pytest.raises(Conflict, match="different embedding spaces"):
        publish(other, collection_id=cid, settings=db_settings, progress=False)


def _nan_row(rank: int, cols: dict[str, Any]) -> None:
    if rank == 1:
        cols["embedding"][3, 2] = np.nan


def _far_geometry(rank: int, cols: dict[str, Any]) -> None:
    if rank == 0:
        cols["geometry"][5] = shapely.to_wkb(shapely.box(500000, 5e6, 500640, 5000640))


def _bowtie(rank: int, cols: dict[str, Any]) -> None:
    if rank == 0:
        cols["geometry"][7] = shapely.to_wkb(shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)]))


def _many_vertices(rank: int, cols: dict[str, Any]) -> None:
    if rank == 0:  # the API's cap (catalog.geometry.MAX_VERTICES) applies to publish too
        cols["geometry"][2] = shapely.to_wkb(shapely.Point(10, 45).buffer(0.01, 3000))


def _bad_wkb(rank: int, cols: dict[str, Any]) -> None:
    if rank == 1:
        cols["geometry"][0] = b"\x01\x02garbage"


def _duplicate(rank: int, cols: dict[str, Any]) -> None:
    if rank == 1:
        cols["id"][4] = "chip-00000001"


def _huge_value(rank: int, cols: dict[str, Any]) -> None:
    if rank == 0:
        cols["embedding"][1, 0] = 1e6  # beyond float16


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_nan_row, r"shard-00001-of-00002.parquet row 3 \(id 'chip-00000023'\): .*NaN"),
        (_far_geometry, r"row 5 .*outside the WGS84 range"),
        (_bowtie, r"row 7 .*invalid"),
        (_bad_wkb, r"row 0 .*not valid WKB"),
        (_many_vertices, r"row 2 .*more than 10000 vertices"),
        (_duplicate, r"duplicate item ids.*'chip-00000001' \(2x\)"),
        (_huge_value, r"row 1 .*float16 range"),
    ],
    ids=["nan", "projected", "self-intersecting", "bad-wkb", "vertices", "duplicate", "float16"],
)
def test_bad_input_is_named_and_nothing_is_written(
    tmp_path: Path, db_settings: DatabaseSettings, mutate: Any, message: str
):
    bad = write_run(tmp_path / "bad", 40, dims=8, seed=4, encoder=_name(), mutate=mutate)
    before = _snapshot(db_settings.database_url)
    with pytest.raises(InvalidInput, match=message):
        publish(bad, collection_id=_name(), settings=db_settings, progress=False)
    assert _snapshot(db_settings.database_url) == before


def test_shard_changed_after_the_manifest_is_refused(run: Path, db_settings: DatabaseSettings):
    shard = run / "shard-00000-of-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    before = _snapshot(db_settings.database_url)
    with pytest.raises(InvalidInput, match="shard-00000-of-00002.parquet: sha256"):
        publish(run, collection_id=_name(), settings=db_settings, progress=False)
    assert _snapshot(db_settings.database_url) == before


def test_missing_manifest_is_a_clear_error(tmp_path: Path, db_settings: DatabaseSettings):
    with pytest.raises(InvalidInput, match="no manifest"):
        publish(tmp_path, settings=db_settings, progress=False)


def test_publish_record_is_kept_and_listed(run: Path, db_settings: DatabaseSettings):
    cid = _name()
    res = publish(run, collection_id=cid, settings=db_settings, progress=False)
    with psycopg.connect(db_settings.database_url) as c:
        records = list_publishes(c, cid)
    assert len(records) == 1
    rec = records[0]
    assert (rec["id"], rec["mode"], rec["rows"], rec["inserted"]) == (
        res.publish_id,
        "ignore",
        40,
        40,
    )
    assert rec["manifest_sha256"] == res.manifest_sha256
    out = CliRunner().invoke(main, ["publishes", "--collection", cid])
    assert out.exit_code == 0, out.output
    assert cid in out.output and res.manifest_sha256[:12] in out.output


def test_first_load_builds_the_hnsw_index(run: Path, db_settings: DatabaseSettings):
    res = publish(run, collection_id=_name(), settings=db_settings, progress=False)
    assert res.index_built
    with psycopg.connect(db_settings.database_url) as c:
        valid = c.execute(
            "select i.indisvalid from pg_class c join pg_index i on i.indexrelid = c.oid"
            " where c.relname = %s",
            (f"embeddings_hnsw_space_{res.space_id}",),
        ).fetchone()
    assert valid == (True,)


def test_deferred_index_is_built_by_the_cli(run: Path, db_settings: DatabaseSettings):
    cid = _name()
    res = publish(run, collection_id=cid, settings=db_settings, progress=False, defer_index=True)
    assert not res.index_built
    status = CliRunner().invoke(main, ["index", "status", cid])
    assert '"valid": false' in status.output
    out = CliRunner().invoke(main, ["index", "build", cid])
    assert out.exit_code == 0, out.output
    assert "built the hnsw-halfvec index" in out.output  # 16 dimensions: HNSW (auto)
    assert '"valid": true' in CliRunner().invoke(main, ["index", "status", cid]).output


def test_cli_publish_prints_a_summary(run: Path, db_settings: DatabaseSettings):
    out = CliRunner().invoke(
        main, ["publish", str(run / "manifest.json"), "--collection", _name(), "--no-progress"]
    )
    assert out.exit_code == 0, out.output
    assert "published 40 rows" in out.output and "rows/s" in out.output


def test_cli_reports_bad_input_without_traceback(tmp_path: Path, db_settings: DatabaseSettings):
    bad = write_run(tmp_path / "bad", 20, dims=8, seed=5, encoder=_name(), mutate=_nan_row)
    out = CliRunner().invoke(main, ["publish", str(bad), "--no-progress"])
    assert out.exit_code == 1
    assert "error: invalid input" in out.output and "Traceback" not in out.output


def test_publish_runs_are_counted_in_the_metrics(run: Path, db_settings: DatabaseSettings):
    from embcat.catalog import metrics

    def count(outcome: str) -> float:
        return metrics.PUBLISH_TOTAL.labels(mode="ignore", outcome=outcome)._value.get()

    ok, invalid = count("ok"), count("invalid")
    publish(run, collection_id=_name(), settings=db_settings, progress=False)
    with pytest.raises(InvalidInput):
        publish(run / "nothing-here", settings=db_settings, progress=False)
    assert (count("ok"), count("invalid")) == (ok + 1, invalid + 1)


def test_stats_compare_with_the_source_bytes_of_the_manifest(
    run: Path, db_settings: DatabaseSettings
):
    from embcat.catalog.db import connect
    from embcat.catalog.stats import collection_stats
    from embcat.encoders.manifest import Manifest

    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    publish(run, collection_id=cid, settings=db_settings, progress=False)  # no-op re-run
    with connect(db_settings) as conn:
        stats = collection_stats(conn, cid, sample=40, queries=5)
    assert stats.source_bytes == Manifest.load(run).source_bytes > 0


# -- several chunks (large runs are staged and merged a chunk at a time) ------------------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 1000 rows: each shard's single record batch below becomes its own chunk."""
    import embcat.catalog.publish_load as publish_mod

    monkeypatch.setattr(publish_mod, "CHUNK_BYTES", 1)


def test_a_run_merged_in_several_chunks_is_published_whole(
    tmp_path: Path, db_settings: DatabaseSettings, small_chunks: None
):
    big = write_run(tmp_path / "big", 3000, dims=8, seed=5, shards=3, encoder=_name())
    cid = _name()
    res = publish(big, collection_id=cid, settings=db_settings, progress=False)
    assert (res.rows, res.inserted) == (3000, 3000)
    with psycopg.connect(db_settings.database_url) as c:
        record = list_publishes(c, cid)[0]
        assert record["details"]["chunks"] == 3
        n, xmin, ymin, xmax, ymax = c.execute(
            "select count(*), min(ST_XMin(geometry)), min(ST_YMin(geometry)),"
            " max(ST_XMax(geometry)), max(ST_YMax(geometry)) from items"
            " where collection_id = %s",
            (cid,),
        ).fetchone()  # type: ignore[misc]
        stac = c.execute("select stac from collections where id = %s", (cid,)).fetchone()[0]  # type: ignore[index]
        vectors = c.execute(
            "select count(*) from embeddings where collection_id = %s", (cid,)
        ).fetchone()[0]  # type: ignore[index]
    assert n == vectors == 3000
    # the collection's extent covers the rows of every chunk, not only the first
    assert stac["extent"]["spatial"]["bbox"][0] == pytest.approx([xmin, ymin, xmax, ymax])
    again = publish(big, collection_id=cid, settings=db_settings, progress=False)
    assert (again.inserted, again.skipped) == (0, 3000)


def _duplicate_in_last_shard(rank: int, cols: dict[str, Any]) -> None:
    if rank == 2:
        cols["id"][10] = "chip-00000003"  # an id of the first shard (first chunk)


def _nan_in_last_shard(rank: int, cols: dict[str, Any]) -> None:
    if rank == 2:
        cols["embedding"][999, 0] = np.nan


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_duplicate_in_last_shard, r"duplicate item ids.*'chip-00000003' \(2x\)"),
        (_nan_in_last_shard, r"shard-00002-of-00003.parquet row 999 .*NaN"),
    ],
    ids=["duplicate-across-chunks", "bad-row-after-merged-chunks"],
)
def test_bad_input_in_a_later_chunk_is_named_and_nothing_is_written(
    tmp_path: Path, db_settings: DatabaseSettings, small_chunks: None, mutate: Any, message: str
):
    bad = write_run(
        tmp_path / "bad", 3000, dims=8, seed=6, shards=3, encoder=_name(), mutate=mutate
    )
    before = _snapshot(db_settings.database_url)
    with pytest.raises(InvalidInput, match=message):
        publish(bad, collection_id=_name(), settings=db_settings, progress=False)
    assert _snapshot(db_settings.database_url) == before


_AWKWARD_TEXT = ['scene "A"\\b', "szène-ü/ø", "tab\there", "line\nbreak", "emoji 🛰", "x"]
_AWKWARD_NODATA = [0.0, 1.0, 0.25, 1 / 3, 0.1234565, 0.0000005, 0.9999996, 0.1]


def _awkward_values(rank: int, cols: dict[str, Any]) -> None:
    """Strings that need JSON escaping, ids that need percent-encoding, microseconds,
    and nodata fractions at the edge of rounding to 6 places."""

    n = len(cols["id"])
    for i in range(n):
        text = _AWKWARD_TEXT[i % len(_AWKWARD_TEXT)]
        cols["source_item"][i] = f"{text} {i % 3}"
        cols["source_asset"][i] = text
        cols["source_href"][i] = f"/data/{text}.tif"
        cols["source_crs"][i] = "EPSG:32633" if i % 2 else 'EPSG:"odd"'
        cols["nodata_fraction"][i] = _AWKWARD_NODATA[i % len(_AWKWARD_NODATA)]
        cols["datetime"][i] += timedelta(microseconds=(i * 12_345) % 1_000_000 if i % 3 else 0)
        if i % 4 == 0:
            cols["id"][i] = f"chip {rank}/{i}?é"


def test_item_documents_hold_each_rows_values(tmp_path: Path, db_settings: DatabaseSettings):
    from urllib.parse import quote

    import pyarrow.parquet as pq

    from embcat.catalog.stacgen import SOURCE_MEDIA_TYPE

    awkward = write_run(
        tmp_path / "awk", 24, dims=8, seed=3, mutate=_awkward_values, encoder=_name()
    )
    cid = _name()
    publish(awkward, collection_id=cid, settings=db_settings, progress=False)
    rows = pq.read_table(sorted(awkward.glob("*.parquet"))).to_pylist()
    url = db_settings.database_url
    with psycopg.connect(url) as c:
        stored = {r[0]: r for r in _items(url, cid)}
        assert len(stored) == len(rows) == 24
        for row in rows:
            _, _, _, props, assets, links, _ = stored[row["id"]]
            # PostgreSQL's own round(float4::numeric, 6) is the reference for the fraction
            nodata = c.execute(
                "select round(%s::float4::numeric, 6)", (row["nodata_fraction"],)
            ).fetchone()[0]  # type: ignore[index]
            dt = row["datetime"].astimezone(UTC)
            assert props["datetime"] == dt.strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ" if dt.microsecond else "%Y-%m-%dT%H:%M:%SZ"
            )
            assert props["proj:code"] == row["source_crs"]
            assert props["proj:shape"] == [row["window_height"], row["window_width"]]
            assert props["embcat:source_item"] == row["source_item"]
            assert props["embcat:source_asset"] == row["source_asset"]
            assert props["embcat:window"] == [
                row["window_col"], row["window_row"], row["window_width"], row["window_height"]
            ]  # fmt: skip
            assert props["embcat:nodata_fraction"] == float(nodata)
            assert assets["embeddings"]["href"] == (
                f"/collections/{quote(cid, safe='')}/items/{quote(row['id'], safe='')}/embedding"
            )
            assert links == [
                {"rel": "derived_from", "href": source_uri(row["source_href"]),
                 "type": SOURCE_MEDIA_TYPE,
                 "title": row["source_item"]}
            ]  # fmt: skip


def test_summary_and_record_split_the_time_into_load_and_index(
    run: Path, db_settings: DatabaseSettings
):
    cid = _name()
    res = publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert res.index_built and res.index_kind == "hnsw-halfvec"  # 16 dims: auto is HNSW
    assert f"+ hnsw-halfvec index {res.index_s:.1f} s" in res.summary()
    assert "searchable: load" in res.summary()
    with psycopg.connect(db_settings.database_url) as c:
        row = c.execute("select details from publishes where id = %s", (res.publish_id,)).fetchone()
    assert row is not None
    details = row[0]
    assert details["index_kind"] == "hnsw-halfvec"
    assert details["load_s"] + details["index_s"] <= details["elapsed_s"] + 0.01
    assert details["index_s"] > 0


def test_cli_index_build_switches_the_kind(run: Path, db_settings: DatabaseSettings):
    cid = _name()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    out = CliRunner().invoke(main, ["index", "build", cid, "--kind", "ivfflat-bit"])
    assert out.exit_code == 0, out.output
    assert "built the ivfflat-bit index" in out.output
    status = json.loads(CliRunner().invoke(main, ["index", "status", cid]).output)
    assert (status["kind"], status["valid"]) == ("ivfflat-bit", True)
    with psycopg.connect(db_settings.database_url) as c:
        left = c.execute(
            "select count(*) from pg_class where relname = %s",
            (f"embeddings_hnsw_space_{status['space']}",),
        ).fetchone()
    assert left == (0,)  # the replaced HNSW index was dropped after the swap


def test_cli_index_build_refuses_an_unknown_kind(run: Path, db_settings: DatabaseSettings):
    out = CliRunner().invoke(main, ["index", "build", _name(), "--kind", "lsh"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "'lsh' is not one of" in out.output


@pytest.mark.parametrize("bad", ["with space", "-leading-dash", "x" * 256, "a/b"])
def test_an_invalid_collection_id_is_refused_before_anything_is_read(
    run: Path, db_settings: DatabaseSettings, bad: str
) -> None:
    before = _snapshot(db_settings.libpq_url)
    with pytest.raises(InvalidInput, match="invalid collection id"):
        publish(run, collection_id=bad, settings=db_settings, progress=False)
    assert _snapshot(db_settings.libpq_url) == before


def test_an_empty_collection_id_is_refused(run: Path, db_settings: DatabaseSettings) -> None:
    with pytest.raises(InvalidInput, match="collection id is empty"):
        publish(run, collection_id="", settings=db_settings, progress=False)


def test_cli_publish_with_an_invalid_collection_id_is_one_line(
    run: Path, db_settings: DatabaseSettings
) -> None:
    result = CliRunner().invoke(main, ["publish", str(run), "--collection", "with space"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid collection id 'with space'")
    assert result.stderr.count("\n") == 1


def test_the_index_of_a_new_space_records_the_rows_the_publish_merged(
    run: Path, db_settings: DatabaseSettings
) -> None:
    # the publish counts the rows it merged into the new space's partition and hands that
    # to the index build (at 10M a count(*) over the just-loaded rows took minutes)
    res = publish(run, collection_id=_name(), settings=db_settings, progress=False)
    with psycopg.connect(db_settings.database_url) as c:
        params = c.execute(
            "select index_params from embedding_spaces where id = %s", (res.space_id,)
        ).fetchone()
    assert params is not None and params[0]["rows"] == 40
