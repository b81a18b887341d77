"""One builder of the next / prev links of a page of search results (STAC API paging).

A GET search links to the same path with the same query parameters and the page's
``token``; a POST search links with ``method: POST`` and the client's body (as it was
sent, not the server model's defaults) with the token in it, ``merge: false``. Item
search (keyset tokens) and similarity search (``sim:<offset>`` tokens) both build their
links here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

GEOJSON = "application/geo+json"


def page_links(
    base: str,
    path: str,
    pages: Iterable[tuple[str, str | None]],
    *,
    params: Mapping[str, Any] | None = None,
    body: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Links for ``pages`` (``(rel, token)``; a None token: no such page) of the search at
    ``base + path``: POST links carrying ``body`` when it is given, else GET links with
    ``params`` (the request's query parameters; its own ``token`` replaced)."""
    links: list[dict[str, Any]] = []
    for rel, token in pages:
        if not token:
            continue
        if body is not None:
            links.append(
                {
                    "rel": rel,
                    "type": GEOJSON,
                    "method": "POST",
                    "href": f"{base}{path}",
                    "body": {**body, "token": token},
                    "merge": False,
                }
            )
            continue
        query = {k: v for k, v in (params or {}).items() if v is not None and k != "token"}
        query["token"] = token
        links.append(
            {
                "rel": rel,
                "type": GEOJSON,
                "method": "GET",
                "href": f"{base}{path}?{urlencode(query)}",
            }
        )
    return links


__all__ = ["page_links"]
