"""The filters a mirror sends and saves (catalog.mirror_options): decided by the one parser."""

from __future__ import annotations

from embcat.catalog.mirror_options import MirrorOptions

FILTER = {"op": "=", "args": [{"property": "id"}, "a"]}


def _filters(flt: object) -> dict:
    return MirrorOptions(remote_url="http://127.0.0.1:9", collection_id="c", filter=flt).filters()  # type: ignore[arg-type]


def test_cql2_json_given_as_text_is_sent_as_an_object() -> None:
    assert _filters('{"op": "=", "args": [{"property": "id"}, "a"]}') == {
        "filter": FILTER,
        "filter-lang": "cql2-json",
    }


def test_cql2_text_is_sent_as_text() -> None:
    assert _filters("id = 'a'") == {"filter": "id = 'a'", "filter-lang": "cql2-text"}
