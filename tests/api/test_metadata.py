"""Issue 19: what embcat serves validates against the core schema and every extension
schema it declares (offline, tests/schemas), and its metadata is what it claims."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from metadata_fixtures import CHIP, Published, encode_and_publish
from offline_schemas import assert_valid, stac_errors

from embcat.catalog.settings import DatabaseSettings


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory, db_settings: DatabaseSettings
) -> Iterator[Published]:
    cid = f"meta-{uuid.uuid4().hex[:8]}"
    out = encode_and_publish(tmp_path_factory.mktemp("metadata"), db_settings, cid)
    yield out
    with psycopg.connect(db_settings.database_url) as conn:
        conn.execute("DELETE FROM collections WHERE id = %s", (cid,))


def _get(url: str, **params: Any) -> dict[str, Any]:
    r = httpx.get(url, params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _first_item(live_server: str, cid: str) -> dict[str, Any]:
    page = _get(f"{live_server}/collections/{cid}/items", limit=1)
    return _get(f"{live_server}/collections/{cid}/items/{page['features'][0]['id']}")


# ---------------------------------------------------------------- schema validity


def test_published_collection_validates(live_server: str, published: Published) -> None:
    assert_valid(_get(f"{live_server}/collections/{published.collection_id}"))


def test_published_item_validates(live_server: str, published: Published) -> None:
    assert_valid(_first_item(live_server, published.collection_id))


def test_item_collection_page_validates(live_server: str, published: Published) -> None:
    assert_valid(_get(f"{live_server}/collections/{published.collection_id}/items", limit=5))


def test_search_page_validates(live_server: str, published: Published) -> None:
    assert_valid(_get(f"{live_server}/search", collections=published.collection_id, limit=5))


def test_model_item_validates(live_server: str, published: Published) -> None:
    assert_valid(_get(f"{live_server}/collections/{published.collection_id}/model"))


def test_collections_list_validates(live_server: str, published: Published) -> None:
    # Only the published collection: other tests of the session load bare collections
    # straight into the tables (tests/vectorgen.load_collection), not through publish.
    body = _get(f"{live_server}/collections?limit=1000")
    ours = [c for c in body["collections"] if c["id"] == published.collection_id]
    assert len(ours) == 1
    errors = [e for e in stac_errors(ours[0])]
    assert errors == [], "\n".join(errors)


def test_landing_page_validates(live_server: str) -> None:
    assert_valid(_get(live_server + "/"))


def test_seeded_items_with_eo_fields_validate(live_server: str, seeded: Any) -> None:
    cid, _ = seeded
    assert_valid(_get(f"{live_server}/collections/{cid}/items", limit=3))


def test_an_undeclared_schema_is_not_skipped() -> None:
    doc = {"type": "Feature", "stac_version": "1.1.0", "stac_extensions": ["https://x/y.json"]}
    assert any("not held" in e for e in stac_errors(doc))


def test_chip_layout_integers_fail_the_embeddings_schema(
    live_server: str, published: Published
) -> None:
    """The check itself: the stored shape before issue 19 fails it."""
    coll = _get(f"{live_server}/collections/{published.collection_id}")
    coll["emb:chip_layout"]["chip_size"] = CHIP
    assert any("chip_size" in e for e in stac_errors(coll))


# ---------------------------------------------------------------- metadata content


def test_chip_layout_is_the_runs_as_arrays(live_server: str, published: Published) -> None:
    coll = _get(f"{live_server}/collections/{published.collection_id}")
    layout = coll["emb:chip_layout"]
    assert layout["chip_size"] == [CHIP, CHIP] and layout["stride"] == [CHIP, CHIP]


def test_collection_has_summaries(live_server: str, published: Published) -> None:
    coll = _get(f"{live_server}/collections/{published.collection_id}")
    summaries = coll["summaries"]
    assert summaries["emb:dimensions"] == [coll["emb:dimensions"]]
    assert summaries["gsd"] == [10.0]
    assert len(summaries["bands"]) == 13


def test_collection_processing_fields_are_in_a_provider(
    live_server: str, published: Published
) -> None:
    coll = _get(f"{live_server}/collections/{published.collection_id}")
    assert not [k for k in coll if k.startswith("processing:")]
    (provider,) = [p for p in coll["providers"] if "processor" in p["roles"]]
    assert provider["processing:software"]["embcat"]


def test_every_collection_link_has_a_title(live_server: str, published: Published) -> None:
    links = _get(f"{live_server}/collections/{published.collection_id}")["links"]
    assert [link["rel"] for link in links if not link.get("title")] == []


def test_source_data_is_a_file_uri_of_the_encoding_site(
    live_server: str, published: Published
) -> None:
    links = _get(f"{live_server}/collections/{published.collection_id}")["links"]
    sources = [link["href"] for link in links if link["rel"] == "emb:source-data"]
    assert sources == [published.scene.resolve().as_uri()]


def test_derived_from_is_a_file_uri_of_the_encoding_site(
    live_server: str, published: Published
) -> None:
    item = _first_item(live_server, published.collection_id)
    (derived,) = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
    assert derived == published.scene.resolve().as_uri()


def test_model_item_has_a_real_datetime_and_a_model_asset(
    live_server: str, published: Published
) -> None:
    model = _get(f"{live_server}/collections/{published.collection_id}/model")
    assert not model["properties"]["datetime"].startswith("1970")
    (asset,) = [a for a in model["assets"].values() if "mlm:model" in a["roles"]]
    assert asset["href"].startswith("file://") and asset["mlm:artifact_type"]


def test_builtin_encoder_is_not_pretrained(live_server: str, published: Published) -> None:
    props = _get(f"{live_server}/collections/{published.collection_id}/model")["properties"]
    assert props["mlm:pretrained"] is False and props["mlm:pretrained_source"] is None


def test_hyperparameters_report_the_encoded_chip_size(
    live_server: str, published: Published
) -> None:
    props = _get(f"{live_server}/collections/{published.collection_id}/model")["properties"]
    assert props["mlm:hyperparameters"]["chip_size"] == CHIP


def test_stac_versions_follow_the_declared_extensions(
    live_server: str, published: Published
) -> None:
    coll = _get(f"{live_server}/collections/{published.collection_id}")
    model = _get(f"{live_server}/collections/{published.collection_id}/model")
    assert (coll["stac_version"], model["stac_version"]) == ("1.0.0", "1.1.0")
    assert model["stac_extensions"][0].endswith("/mlm/v1.5.0/schema.json")


# ---------------------------------------------------------------- links resolve


def _check_links(doc: dict[str, Any], live_server: str) -> list[str]:
    """Every href of ``doc`` (links and assets): this server's answer 200; any other is an
    absolute URI (file:// ones name a file that exists on the encoding site, here)."""
    from urllib.parse import unquote, urlsplit

    hrefs = [(link.get("method", "GET"), link) for link in doc.get("links", [])]
    hrefs += [("GET", a) for a in (doc.get("assets") or {}).values()]
    bad = []
    for method, link in hrefs:
        href = link["href"]
        if href.startswith(live_server):
            if method == "POST":
                r = httpx.post(href, json=link.get("body") or {}, timeout=30)
            else:
                r = httpx.get(href, timeout=30)
            if r.status_code != 200:
                bad.append(f"{link.get('rel')} {href}: HTTP {r.status_code}")
            continue
        parts = urlsplit(href)
        if parts.scheme == "file":
            if not Path(unquote(parts.path)).exists():
                bad.append(f"{link.get('rel')} {href}: no such file on the encoding site")
        elif parts.scheme not in ("https", "http", "s3", "urn") or not (
            parts.netloc or parts.scheme == "urn"
        ):
            bad.append(f"{link.get('rel')} {href}: neither served here nor an absolute URI")
    return bad


def test_every_link_of_the_collection_resolves(live_server: str, published: Published) -> None:
    coll = _get(f"{live_server}/collections/{published.collection_id}")
    assert _check_links(coll, live_server) == []


def test_every_link_of_an_item_resolves(live_server: str, published: Published) -> None:
    assert _check_links(_first_item(live_server, published.collection_id), live_server) == []


def test_every_link_of_a_search_page_resolves(live_server: str, published: Published) -> None:
    page = _get(f"{live_server}/search", collections=published.collection_id, limit=2)
    assert _check_links(page, live_server) == []


def test_every_link_of_the_landing_page_resolves(live_server: str, published: Published) -> None:
    assert _check_links(_get(live_server + "/"), live_server) == []


def test_every_link_of_the_model_item_resolves(live_server: str, published: Published) -> None:
    model = _get(f"{live_server}/collections/{published.collection_id}/model")
    assert _check_links(model, live_server) == []


# ---------------------------------------------------------------- API surface


def test_search_page_holding_every_match_reports_the_exact_count(
    live_server: str, published: Published
) -> None:
    page = _get(f"{live_server}/search", collections=published.collection_id, limit=100)
    assert page["numberMatched"] == published.items
    assert "embcat:numberMatched_estimated" not in page


def test_search_page_reports_a_flagged_estimate(live_server: str, published: Published) -> None:
    page = _get(f"{live_server}/search", collections=published.collection_id, limit=2)
    assert page["embcat:numberMatched_estimated"] is True
    assert isinstance(page["numberMatched"], int) and page["numberMatched"] >= 2


def test_conformance_lists_both_sort_uris(live_server: str) -> None:
    classes = _get(live_server + "/conformance")["conformsTo"]
    assert "https://api.stacspec.org/v1.0.0/item-search#sort" in classes
    assert "https://api.stacspec.org/v1.1.0/item-search#sort" in classes


def test_pystac_client_sorts_without_warning_and_counts(
    live_server: str, published: Published
) -> None:
    import warnings

    from pystac_client import Client

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = Client.open(live_server + "/")
        search = client.search(collections=[published.collection_id], sortby="-datetime", limit=2)
        matched = search.matched()
        assert isinstance(matched, int) and matched >= 2
        assert len(list(search.items())) == published.items


def test_landing_page_has_the_configured_title(live_server: str) -> None:
    landing = _get(live_server + "/")
    assert (landing["id"], landing["title"]) == ("embcat", "embcat")


def test_api_docs_page_loads_its_assets_from_this_server(live_server: str) -> None:
    import re

    html = httpx.get(live_server + "/api.html", timeout=30).text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    for asset in assets:
        assert httpx.get(live_server + asset, timeout=30).status_code == 200, asset


def test_mirrored_collection_has_one_queryables_link_and_its_origin() -> None:
    from embcat.catalog.mirror import _strip_collection

    remote = "https://origin.example/stac"
    stac = {
        "id": "c",
        "links": [
            {"rel": "self", "href": f"{remote}/collections/c"},
            {"rel": "queryables", "href": f"{remote}/collections/c/queryables"},
        ],
    }
    links = _strip_collection(stac, remote)["links"]
    assert [link["rel"] for link in links] == ["via"]
    assert links[0]["href"] == f"{remote}/collections/c"


def test_queryables_refer_to_no_schema_on_the_internet(live_server: str) -> None:
    import json

    text = json.dumps(_get(live_server + "/queryables"))
    assert "$ref" not in text


def test_number_matched_past_the_limit_is_a_flagged_estimate(
    published: Published, database_url: str
) -> None:
    from embcat.catalog.search import SearchQuery, count_matched

    query = SearchQuery(collections=[published.collection_id])
    with psycopg.connect(database_url) as conn:
        assert count_matched(conn, query, limit=100) == (published.items, False)
        estimate, estimated = count_matched(conn, query, limit=2)
    assert estimated and estimate >= 3
