"""Chip thumbnails and scene quicklooks served by the live API (api/imagery.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from helpers_server import start_server
from imagerydata import add_quicklook, add_thumbnails, tiny_png
from shardgen import write_run

from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def published(tmp_path_factory, database_url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    run = write_run(tmp_path_factory.mktemp("imgapi") / "run", 6, dims=8, seed=2,
                    encoder="e" + uuid.uuid4().hex[:8])  # fmt: skip
    made = add_thumbnails(run, lambda k, _i: tiny_png(k) if k else None)  # each shard's row 0: none
    add_quicklook(run, "scene-000")
    cid = f"imgapi-{uuid.uuid4().hex[:8]}"
    publish(run, collection_id=cid, settings=DatabaseSettings(database_url=database_url),
            progress=False)  # fmt: skip
    yield cid, made
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (cid,))


def _item(base: str, cid: str, iid: str, **kw) -> dict:
    r = httpx.get(f"{base}/collections/{cid}/items/{iid}", **kw)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_thumbnail_asset_href_answers_the_png(live_server, published) -> None:
    cid, made = published
    iid = sorted(made)[0]
    asset = _item(live_server, cid, iid)["assets"]["thumbnail"]
    assert asset["href"] == f"{live_server}/collections/{cid}/items/{iid}/thumbnail.png"
    assert asset["roles"] == ["thumbnail"] and asset["type"] == "image/png"
    r = httpx.get(asset["href"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG_MAGIC) and r.content == made[iid]
    assert "max-age" in r.headers["cache-control"]


def test_a_repeated_request_with_the_etag_gets_304(live_server, published) -> None:
    cid, made = published
    url = f"{live_server}/collections/{cid}/items/{sorted(made)[0]}/thumbnail.png"
    etag = httpx.get(url).headers["etag"]
    r = httpx.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""


def test_an_item_without_a_thumbnail_is_404_with_a_message(live_server, published) -> None:
    cid, made = published
    page = httpx.get(f"{live_server}/collections/{cid}/items?limit=100").json()
    bare = [f["id"] for f in page["features"] if f["id"] not in made]
    assert len(bare) == 2  # the first row of each of the two shards
    assert "thumbnail" not in _item(live_server, cid, bare[0])["assets"]
    r = httpx.get(f"{live_server}/collections/{cid}/items/{bare[0]}/thumbnail.png")
    assert r.status_code == 404
    assert "has no thumbnail" in r.json()["description"]


def test_unknown_items_and_collections_are_404(live_server, published) -> None:
    cid, _made = published
    for path in (f"collections/{cid}/items/nope/thumbnail.png",
                 "collections/no-such-collection/items/x/thumbnail.png",
                 f"collections/{cid}/quicklooks/nope.png"):  # fmt: skip
        r = httpx.get(f"{live_server}/{path}")
        assert r.status_code == 404, (path, r.text)


def test_scene_quicklook_assets_are_served(live_server, published) -> None:
    cid, _made = published
    coll = httpx.get(f"{live_server}/collections/{cid}").json()
    asset = coll["assets"]["quicklook-scene-000"]
    assert asset["roles"] == ["overview"] and asset["embcat:bbox"] == [15.0, 48.7, 15.1, 48.8]
    r = httpx.get(asset["href"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG_MAGIC)
    assert r.headers["etag"]


@pytest.fixture(scope="module")
def keyed_server(api_settings) -> Iterator[str]:
    handle = start_server(api_settings.model_copy(update={"require_read_key": True}))
    try:
        yield handle.base_url
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def keys(database_url: str, published, seeded) -> Iterator[dict[str, str]]:
    from embcat.catalog.keys import create_key

    made = {}
    with psycopg.connect(database_url) as conn:
        for name, collection in (("own", published[0]), ("other", seeded[0])):
            key_id, secret = create_key(conn, f"img-{name}", ["read"], collection)
            made[name] = (key_id, secret)
    yield {k: v[1] for k, v in made.items()}
    with psycopg.connect(database_url) as conn:
        conn.execute("delete from api_keys where id = any(%s)", ([v[0] for v in made.values()],))


@pytest.mark.parametrize("route", ["thumbnail", "quicklook"])
def test_read_keys_and_collection_scopes_apply_as_for_the_item(
    keyed_server, published, keys, route: str
) -> None:
    cid, made = published
    path = (
        f"collections/{cid}/items/{sorted(made)[0]}/thumbnail.png"
        if route == "thumbnail"
        else f"collections/{cid}/quicklooks/scene-000.png"
    )
    url = f"{keyed_server}/{path}"
    assert httpx.get(url).status_code == 401
    other = httpx.get(url, headers={"Authorization": f"Bearer {keys['other']}"})
    assert other.status_code == 403
    own = httpx.get(url, headers={"Authorization": f"Bearer {keys['own']}"})
    assert own.status_code == 200 and own.content.startswith(PNG_MAGIC)
    assert own.headers["cache-control"].startswith("private")


def test_a_mirror_keeps_the_origins_thumbnail_url(live_server, published, make_database) -> None:
    from embcat.catalog.mirror import MirrorOptions, mirror

    cid, made = published
    b_url = make_database()
    mirror(MirrorOptions(live_server, cid), DatabaseSettings(database_url=b_url))
    iid = sorted(made)[0]
    with psycopg.connect(b_url) as c:
        assets = c.execute(
            "select assets from items where collection_id = %s and id = %s", (cid, iid)
        ).fetchone()[0]  # type: ignore[index]
    href = assets["thumbnail"]["href"]
    assert href == f"{live_server}/collections/{cid}/items/{iid}/thumbnail.png"
    assert httpx.get(href).content == made[iid]
    assert assets["embeddings"]["href"].startswith("/collections/")  # served by the mirror
    with psycopg.connect(b_url) as c:
        stac = c.execute("select stac from collections where id = %s", (cid,)).fetchone()[0]  # type: ignore[index]
    look = stac["assets"]["quicklook-scene-000"]["href"]
    assert look == f"{live_server}/collections/{cid}/quicklooks/scene-000.png"
