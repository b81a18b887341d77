"""One parser from a request's search parameters to a ``SearchQuery``.

Every way a search arrives (GET ``/search``, POST ``/search``, ``.../similar``, export in
the API and the CLI, mirror) hands its raw values here, so that the filter language is
decided once, a bbox is parsed once, and a bad value gets the same message wherever it
came from. Values may come as text (query parameters, CLI options) or as JSON values
(a POST body); both forms are accepted by each function.

- ``search_from_params(params, ...)``: key/value parameters (a query string), e.g.
  ``{"bbox": "5,45,8,48", "filter": "eo:cloud_cover < 20", "filter-lang": "cql2-text"}``.
- the single-value parsers (``parse_bbox`` and ``parse_bounds``, ``parse_datetime``,
  ``parse_filter``, ``parse_json``, ``parse_list``, ``parse_sortby``, ``parse_fields``) for
  callers that hold typed values already (a validated POST body).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from embcat.catalog.errors import InvalidInput
from embcat.catalog.filters import FILTER_LANGS
from embcat.catalog.search import BBOX_MESSAGE, SearchQuery, check_depth
from embcat.catalog.search_values import bbox_bounds


def parse_list(value: str | Sequence[str] | None) -> list[str] | None:
    """``a,b,c`` (or a list) -> the non-empty names; None when none."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple) or not all(isinstance(p, str) for p in parts):
        raise InvalidInput(f"expected a list of strings, got {value!r}")
    names = [p.strip() for p in parts if p.strip()]
    return names or None


def parse_bbox(value: str | Sequence[Any] | None) -> list[float] | None:
    """``minx,miny,maxx,maxy`` (or 6 numbers, or a JSON list) -> floats; None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str | list | tuple):  # a number or an object in a JSON body
        raise InvalidInput(BBOX_MESSAGE.format(value))
    if len(value) == 0:
        return None
    parts: Sequence[Any] = value.split(",") if isinstance(value, str) else value
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise InvalidInput(BBOX_MESSAGE.format(value)) from None
    if len(numbers) not in (4, 6):
        raise InvalidInput(BBOX_MESSAGE.format(value))
    return numbers


def parse_bounds(value: str | Sequence[Any] | None) -> tuple[float, float, float, float] | None:
    """A bbox as ``(minx, miny, maxx, maxy)`` for callers that need the 2D box itself (the
    explorer's areas): ``parse_bbox``, then the checks a search applies to it (finite,
    latitudes in range; 6 numbers drop z); None when absent."""
    bbox = parse_bbox(value)
    return None if bbox is None else bbox_bounds(bbox)


def parse_datetime(value: Any) -> str | None:
    """An RFC 3339 instant or interval as text (None when absent). Parsed datetimes (a
    framework may hand them over) and interval pairs are written back as text."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list):
        return "/".join(v.isoformat() if hasattr(v, "isoformat") else ".." for v in value)
    if not hasattr(value, "isoformat"):
        raise InvalidInput("datetime must be a string (an RFC 3339 instant or interval)")
    return str(value.isoformat())


def parse_json(name: str, value: Any) -> Any:
    """A parameter that holds JSON (``intersects``, ``query``): text is parsed, objects are
    taken as they are (a JSON body's list or number too: what it must be is checked where
    it is used); nesting deeper than the cap is refused."""
    if not isinstance(value, str):
        check_depth(value, name)
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError, RecursionError):
        raise InvalidInput(f"{name} must be JSON") from None
    check_depth(parsed, name)
    return parsed


def parse_filter(value: Any, lang: str | None) -> tuple[dict[str, Any] | str | None, str | None]:
    """``(filter, filter-lang)``: the language decided once. Given: it must be cql2-text or
    cql2-json. Not given: a JSON object (or text starting with ``{``) is cql2-json, other
    text cql2-text. CQL2 JSON given as text stays text (``normalise_filter`` parses it with
    its depth checks)."""
    if value is None or value == "":
        return None, lang
    if lang is not None and lang not in FILTER_LANGS:
        raise InvalidInput(f"unsupported filter-lang {lang!r}")
    if lang is None:
        is_json = isinstance(value, dict | bool) or (
            isinstance(value, str) and value.lstrip().startswith("{")
        )
        lang = "cql2-json" if is_json else "cql2-text"
    return value, lang


def parse_sortby(value: Any) -> list[dict[str, str]] | None:
    """``-datetime,+id`` (or a list of such, or of ``{field, direction}``) -> sort keys."""
    if not value:
        return None
    raw = value.split(",") if isinstance(value, str) else value
    out = []
    for v in raw:
        if isinstance(v, dict):
            out.append({"field": v["field"], "direction": str(v.get("direction", "asc"))})
        elif isinstance(v, str):
            v = v.strip()
            if v:
                direction = "desc" if v.startswith("-") else "asc"
                out.append({"field": v.lstrip("+-").strip(), "direction": direction})
        else:  # a model with field / direction attributes
            direction = getattr(v.direction, "value", v.direction)
            out.append({"field": v.field, "direction": str(direction)})
    return out or None


def parse_fields(value: Any) -> dict[str, Any] | None:
    """``id,-assets`` (or a list of such) -> the Fields extension's include / exclude."""
    if not value:
        return None
    raw = value.split(",") if isinstance(value, str) else value
    include, exclude = [], []
    for v in raw:
        v = v.strip()
        if v.startswith("-"):
            exclude.append(v[1:])
        elif v:
            include.append(v.lstrip("+"))
    return {"include": include, "exclude": exclude}


def search_from_params(
    params: Mapping[str, Any],
    *,
    limit: int = 10,
    collections: Sequence[str] | None = None,
) -> SearchQuery:
    """The SearchQuery of key/value search parameters (a query string, CLI options).

    Names as in the STAC API: collections, ids, bbox, intersects, datetime, filter,
    filter-lang (also filter_lang), query, q, sortby, fields, limit, token. ``limit`` is
    the default page size; ``collections`` the default scope (e.g. a route's collection).
    """
    flt, lang = parse_filter(
        params.get("filter"), params.get("filter-lang") or params.get("filter_lang")
    )
    raw_limit = params.get("limit")
    if raw_limit not in (None, ""):
        try:
            limit = int(raw_limit)
        except (TypeError, ValueError):
            raise InvalidInput(f"limit must be an integer, got {raw_limit!r}") from None
    if limit < 1:
        raise InvalidInput("limit must be at least 1")
    q = params.get("q")
    default_scope = list(collections) if collections else None
    return SearchQuery(
        collections=parse_list(params.get("collections")) or default_scope,
        ids=parse_list(params.get("ids")),
        bbox=parse_bbox(params.get("bbox")),
        intersects=parse_json("intersects", params.get("intersects")),
        datetime=parse_datetime(params.get("datetime")),
        filter=flt,
        filter_lang=lang,
        query=parse_json("query", params.get("query")),
        q=parse_list(q) if isinstance(q, str) else q,
        sortby=parse_sortby(params.get("sortby")),
        fields=parse_fields(params.get("fields")),
        limit=limit,
        token=params.get("token") or None,
    )


__all__ = [
    "BBOX_MESSAGE",
    "parse_bbox",
    "parse_bounds",
    "parse_datetime",
    "parse_fields",
    "parse_filter",
    "parse_json",
    "parse_list",
    "parse_sortby",
    "search_from_params",
]
