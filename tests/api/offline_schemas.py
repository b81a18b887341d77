"""Serve JSON schemas offline to stac-validator (CI cannot reach the internet).

stac-validator sends every schema fetch through ``stac_validator.utilities._schema_cache``
(rebuilt by ``_build_schema_cache`` when the cache size changes), and pystac's validator
through ``JsonSchemaSTACValidator._get_schema``. ``install()`` replaces all three: local
files are read, the STAC 1.1.0 core and GeoJSON schemas come from pystac's
bundled copies, and any other URL (extension schemas) gets a permissive schema and is
recorded in ``UNCHECKED`` so that the test can report what it could not check.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

UNCHECKED: set[str] = set()


def _local() -> dict[str, dict[str, Any]]:
    from pystac.validation.local_validator import get_local_schema_cache

    schemas = dict(get_local_schema_cache())
    for url in list(schemas):  # 1.1.0 files also answer for the versionless aliases
        schemas.setdefault(url.replace("http://", "https://"), schemas[url])
    return schemas


@functools.cache
def _known() -> dict[str, dict[str, Any]]:
    return _local()


def fetch(path: str) -> dict[str, Any]:
    if "://" not in path:
        return json.loads(Path(path).read_text())  # type: ignore[no-any-return]
    url = path.split("#", 1)[0]
    known = _known()
    if url in known:
        return known[url]
    if url.rstrip("#") in ("http://json-schema.org/draft-07/schema",):
        return {"$schema": "http://json-schema.org/draft-07/schema#"}
    UNCHECKED.add(url)
    return {}


def install() -> None:
    from pystac.validation import stac_validator as pystac_validator
    from stac_validator import utilities

    # pystac's own validation (stac-api-validator calls it too) fetches schemas itself.
    def get_schema(self: Any, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            schema = dict(fetch(schema_uri))
            schema.setdefault("$schema", "http://json-schema.org/draft-07/schema#")
            schema.setdefault("$id", schema_uri)
            self.schema_cache[schema_uri] = schema
        return self.schema_cache[schema_uri]  # type: ignore[no-any-return]

    pystac_validator.JsonSchemaSTACValidator._get_schema = get_schema  # type: ignore[method-assign]

    def build(maxsize: int) -> Any:
        return functools.lru_cache(maxsize=max(maxsize, 64))(fetch)

    utilities._build_schema_cache = build
    utilities._schema_cache = build(64)
