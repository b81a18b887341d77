"""The one parser of search parameters (catalog.search_request) and the link builder."""

from __future__ import annotations

import pytest

from embcat.catalog.errors import InvalidInput
from embcat.catalog.search import bbox_literal
from embcat.catalog.search_links import page_links
from embcat.catalog.search_request import parse_bbox, parse_filter, parse_json, search_from_params


def _message(call, *args) -> str:
    with pytest.raises(InvalidInput) as caught:
        call(*args)
    return str(caught.value)


def test_a_bad_bbox_gets_one_message_as_text_or_as_a_list() -> None:
    as_text = _message(parse_bbox, "1,2,3")
    as_list = _message(bbox_literal, [1, 2, 3])
    assert as_text.split(", got")[0] == as_list.split(", got")[0]
    assert "4 or 6 numbers" in as_text


def test_the_filter_language_is_decided_from_the_value_when_not_given() -> None:
    assert parse_filter('{"op": "=", "args": [1, 1]}', None)[1] == "cql2-json"
    assert parse_filter({"op": "=", "args": [1, 1]}, None)[1] == "cql2-json"
    assert parse_filter("eo:cloud_cover < 20", None)[1] == "cql2-text"


def test_an_unknown_filter_language_is_refused() -> None:
    assert "filter-lang" in _message(parse_filter, "a = 1", "sql")


def test_parameters_become_a_search_with_the_route_scope_as_default() -> None:
    search = search_from_params({"bbox": "0,0,1,1", "datetime": "2024-01-01T00:00:00Z"},
                                limit=7, collections=["c"])  # fmt: skip
    assert (search.collections, search.bbox, search.limit) == (["c"], [0.0, 0.0, 1.0, 1.0], 7)
    assert search_from_params({"collections": "a,b"}, collections=["c"]).collections == ["a", "b"]


def test_a_non_string_datetime_is_refused_with_a_message() -> None:
    assert "datetime" in _message(search_from_params, {"datetime": 5})


def test_post_links_echo_the_body_with_the_token() -> None:
    body = {"collections": ["c"], "limit": 2}
    (link,) = page_links("http://h", "/search", [("next", "T"), ("prev", None)], body=body)
    assert link["body"] == {**body, "token": "T"} and link["method"] == "POST"


def test_get_links_replace_the_token_of_the_request() -> None:
    (link,) = page_links("http://h", "/search", [("next", "T2")], params={"token": "T1", "a": "1"})
    assert link["href"] == "http://h/search?a=1&token=T2"


def test_a_bbox_that_is_neither_text_nor_a_list_is_refused_with_the_bbox_message() -> None:
    assert "4 or 6 numbers" in _message(parse_bbox, 5)
    assert "4 or 6 numbers" in _message(parse_bbox, {"a": 1})


def test_a_json_body_value_that_is_not_an_object_is_taken_as_it_is() -> None:
    assert parse_json("query", [1]) == [1]
    assert parse_json("intersects", 5) == 5
