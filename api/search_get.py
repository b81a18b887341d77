"""The GET request models of item search (``/search``, ``/collections/{id}/items``) with
the one bbox parser (``catalog.search_request.parse_bbox``).

stac-fastapi's GET models parse ``bbox`` themselves (``invalid bbox: ...``), before the
request reaches the core client; these subclasses swap that converter for the shared
parser, so a bad bbox gets the same message on every route, in the API and in the CLI.
"""

from __future__ import annotations

from typing import Annotated

import attr
from fastapi import Query
from stac_fastapi.api.models import ItemCollectionUri
from stac_fastapi.types.search import BaseSearchGetRequest
from stac_pydantic.shared import BBox

from embcat.catalog.search_request import parse_bbox


def _bbox_converter(
    val: Annotated[
        str | None,
        Query(
            description="Only return items intersecting this bounding box"
            " (minx,miny,maxx,maxy, or 6 numbers with min/max z)."
            " Mutually exclusive with **intersects**.",
            openapi_examples={
                "user-provided": {"value": None},
                "Montreal": {"value": "-73.896103,45.364690,-73.413734,45.674283"},
            },
        ),
    ] = None,
) -> BBox | None:
    numbers = parse_bbox(val)  # InvalidInput (400) with the shared message
    return tuple(numbers) if numbers else None  # type: ignore[return-value]


@attr.s
class SearchGetRequest(BaseSearchGetRequest):
    """GET /search's parameters, bbox parsed by the shared parser."""

    bbox: BBox | None = attr.ib(default=None, converter=_bbox_converter)


@attr.s
class ItemsGetRequest(ItemCollectionUri):
    """GET /collections/{id}/items's parameters, bbox parsed by the shared parser."""

    bbox: BBox | None = attr.ib(default=None, converter=_bbox_converter)


__all__ = ["ItemsGetRequest", "SearchGetRequest"]
