"""Publish stores chip thumbnails and scene quicklooks (catalog.imagery), real database."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from imagerydata import add_quicklook, add_thumbnails
from imagerydata import tiny_png as _png
from shardgen import write_run

from embcat.catalog.errors import InvalidInput
from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings


def _count(url: str, cid: str) -> int:
    with psycopg.connect(url) as c:
        return c.execute("select count(*) from collections where id = %s", (cid,)).fetchone()[0]  # type: ignore[index,no-any-return]


def _cid() -> str:
    return "img" + uuid.uuid4().hex[:10]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", 12, dims=8, seed=3, encoder="e" + uuid.uuid4().hex[:8])


def _thumbs(url: str, cid: str) -> dict[str, bytes]:
    with psycopg.connect(url) as c:
        rows = c.execute(
            "select item_id, png from item_thumbnails where collection_id = %s", (cid,)
        ).fetchall()
    return {r[0]: bytes(r[1]) for r in rows}


def _assets(url: str, cid: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url) as c:
        rows = c.execute("select id, assets from items where collection_id = %s", (cid,)).fetchall()
    return {r[0]: r[1] for r in rows}


def _stac(url: str, cid: str) -> dict[str, Any]:
    with psycopg.connect(url) as c:
        return c.execute("select stac from collections where id = %s", (cid,)).fetchone()[0]  # type: ignore[index,no-any-return]


def test_publish_stores_each_chips_thumbnail_and_gives_the_item_its_asset(
    run: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    made = add_thumbnails(run, lambda k, _i: _png(k))
    cid = _cid()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert _thumbs(database_url, cid) == made
    assets = _assets(database_url, cid)
    some = sorted(assets)[0]
    assert assets[some]["thumbnail"] == {
        "href": f"/collections/{cid}/items/{some}/thumbnail.png",
        "type": "image/png",
        "roles": ["thumbnail"],
        "title": "Chip quicklook (true colour)",
    }
    assert "embeddings" in assets[some]
    assert _stac(database_url, cid)["item_assets"]["thumbnail"]["roles"] == ["thumbnail"]


def test_rows_without_a_thumbnail_get_no_asset(
    run: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    made = add_thumbnails(run, lambda k, _i: _png(k) if k % 2 else None)
    cid = _cid()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    assets = _assets(database_url, cid)
    assert {i for i, a in assets.items() if "thumbnail" in a} == set(made)
    assert set(_thumbs(database_url, cid)) == set(made)


def test_a_run_without_the_column_publishes_as_before(
    run: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    cid = _cid()
    result = publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert result.inserted == 12
    assert all(set(a) == {"embeddings"} for a in _assets(database_url, cid).values())
    assert _thumbs(database_url, cid) == {}
    assert "assets" not in _stac(database_url, cid)


def test_a_thumbnail_that_is_not_a_png_refuses_the_publish_and_writes_nothing(
    run: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    add_thumbnails(run, lambda k, _i: b"GIF89a..." if k == 3 else _png(k))
    cid = _cid()
    with pytest.raises(InvalidInput, match="thumbnail is not a PNG image"):
        publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert _count(database_url, cid) == 0


def test_upsert_replaces_changed_thumbnails_and_deleting_an_item_drops_its_own(
    tmp_path: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    enc = "e" + uuid.uuid4().hex[:8]
    first = write_run(tmp_path / "a", 6, dims=8, seed=3, encoder=enc)
    add_thumbnails(first, lambda k, _i: _png(k))
    second = write_run(tmp_path / "b", 6, dims=8, seed=3, encoder=enc)
    made = add_thumbnails(second, lambda k, _i: _png(100 + k))
    cid = _cid()
    publish(first, collection_id=cid, settings=db_settings, progress=False)
    publish(second, collection_id=cid, settings=db_settings, progress=False, mode="upsert")
    assert _thumbs(database_url, cid) == made
    gone = sorted(made)[0]
    with psycopg.connect(database_url) as c:
        c.execute("delete from items where collection_id = %s and id = %s", (cid, gone))
    assert set(_thumbs(database_url, cid)) == set(made) - {gone}


def test_scene_quicklooks_become_collection_assets_with_their_bounds(
    run: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    png = add_quicklook(run, "scene-000")
    cid = _cid()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    asset = _stac(database_url, cid)["assets"]["quicklook-scene-000"]
    assert asset["href"] == f"/collections/{cid}/quicklooks/scene-000.png"
    assert asset["roles"] == ["overview"] and asset["type"] == "image/png"
    assert asset["embcat:bbox"] == [15.0, 48.7, 15.1, 48.8]
    with psycopg.connect(database_url) as c:
        row = c.execute(
            "select png, bbox from collection_quicklooks where collection_id = %s", (cid,)
        ).fetchone()
    assert row is not None and bytes(row[0]) == png


def test_a_quicklook_that_does_not_match_the_manifest_refuses_the_publish(
    run: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    add_quicklook(run, "scene-000")
    (run / "quicklooks" / "scene-000.png").write_bytes(_png(5))  # same size, other bytes
    cid = _cid()
    with pytest.raises(InvalidInput, match="sha256 does not match"):
        publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert _count(database_url, cid) == 0


def test_an_absent_quicklook_file_is_skipped(
    run: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    add_quicklook(run, "scene-000")
    (run / "quicklooks" / "scene-000.png").unlink()  # e.g. a remote publish: shards only
    cid = _cid()
    publish(run, collection_id=cid, settings=db_settings, progress=False)
    assert "assets" not in _stac(database_url, cid)


def test_a_later_publish_keeps_the_earlier_scenes_quicklooks(
    tmp_path: Path, db_settings: DatabaseSettings, database_url: str
) -> None:
    enc = "e" + uuid.uuid4().hex[:8]
    first = write_run(tmp_path / "a", 4, dims=8, seed=3, encoder=enc, id_prefix="a")
    add_quicklook(first, "scene-a")
    second = write_run(tmp_path / "b", 4, dims=8, seed=3, encoder=enc, id_prefix="b")
    add_quicklook(second, "scene-b", _png(7))
    cid = _cid()
    publish(first, collection_id=cid, settings=db_settings, progress=False)
    publish(second, collection_id=cid, settings=db_settings, progress=False)
    assert set(_stac(database_url, cid)["assets"]) == {"quicklook-scene-a", "quicklook-scene-b"}
