"""GeoJSON responses rendered straight from plain JSON data with orjson.

Item, item-collection, search and similarity routes return these rather than dicts:
FastAPI would otherwise run ``jsonable_encoder`` over every value of a returned dict (about
850 calls and 1.5 ms for a page of 10 items, the largest single cost of a similarity
request on an idle server) before rendering it with the standard library's ``json``. The
data is plain JSON already (JSONB from the database, built by catalog/), so it goes to
orjson as it is; null values stay, such as the ``"datetime": null`` STAC requires of items
with a start/end range.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import JSONResponse

GEOJSON = "application/geo+json"


def _default(value: Any) -> Any:
    """Values orjson does not know (numeric columns, dates, sets) as JSON values."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class GeoJSONDocument(JSONResponse):
    """``application/geo+json``, rendered with orjson; null values are kept."""

    media_type = GEOJSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default)
