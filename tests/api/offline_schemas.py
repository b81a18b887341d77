"""Serve JSON schemas offline to stac-validator (CI cannot reach the internet).

stac-validator sends every schema fetch through ``stac_validator.utilities._schema_cache``
(rebuilt by ``_build_schema_cache`` when the cache size changes), and pystac's validator
through ``JsonSchemaSTACValidator._get_schema``. ``install()`` replaces all three: local
files are read, the schemas held under tests/schemas (extensions, STAC 1.0.0 core) and
pystac's bundled copies (STAC 1.1.0 core, GeoJSON) are served, and any other URL gets a
permissive schema and is recorded in ``UNCHECKED`` so that the test reports it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

UNCHECKED: set[str] = set()
# Schemas that the stac-api-validator run (through pystac) cannot apply: pystac re-writes
# every document it reads as STAC 1.1.0 before validating it, and the embeddings extension
# v0.0.1 pins the STAC 1.0.0 core schema (stac_version const "1.0.0"), so no document
# could pass it there. tests/api/test_metadata.py validates the served JSON against it.
NOT_THROUGH_PYSTAC = {"https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"}


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
    held = _held(url)  # tests/schemas, then pystac's bundled copies
    if held is not None:
        return held
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
            bare = schema_uri.split("#", 1)[0]
            schema = {} if bare in NOT_THROUGH_PYSTAC else dict(fetch(schema_uri))
            schema.setdefault("$schema", "http://json-schema.org/draft-07/schema#")
            schema.setdefault("$id", schema_uri)
            self.schema_cache[schema_uri] = schema
        return self.schema_cache[schema_uri]  # type: ignore[no-any-return]

    pystac_validator.JsonSchemaSTACValidator._get_schema = get_schema  # type: ignore[method-assign]

    def build(maxsize: int) -> Any:
        return functools.lru_cache(maxsize=max(maxsize, 64))(fetch)

    utilities._build_schema_cache = build
    utilities._schema_cache = build(64)


# --------------------------------------------------------------------------------------
# Validation of served documents against the core schema and EVERY extension schema they
# declare, offline. The public schema files are held under tests/schemas/<host>/<path>
# (copied unchanged from their repositories at the tagged versions; see
# tests/schemas/README.md); STAC 1.1.0 core and GeoJSON come from pystac's bundled copies.
# A declared extension whose schema is not held fails the check (it is never skipped).

SCHEMA_ROOT = Path(__file__).resolve().parent.parent / "schemas"
CORE = {
    ("Feature", "1.0.0"): "https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json",
    ("Collection", "1.0.0"): (
        "https://schemas.stacspec.org/v1.0.0/collection-spec/json-schema/collection.json"
    ),
    (
        "Catalog",
        "1.0.0",
    ): "https://schemas.stacspec.org/v1.0.0/catalog-spec/json-schema/catalog.json",
    ("Feature", "1.1.0"): "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
    ("Collection", "1.1.0"): (
        "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json"
    ),
    (
        "Catalog",
        "1.1.0",
    ): "https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/catalog.json",
}
# The envelope of an ItemCollection (STAC API - Features / Item Search); each feature is
# then validated as an item.
ITEM_COLLECTION = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": {"type": "object"}},
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["rel", "href"],
                "properties": {"rel": {"type": "string"}, "href": {"type": "string"}},
            },
        },
        "numberMatched": {"type": "integer", "minimum": 0},
        "numberReturned": {"type": "integer", "minimum": 0},
    },
}


def _held(url: str) -> dict[str, Any] | None:
    """The schema of ``url`` from tests/schemas or pystac's bundled copies, else None."""
    bare = url.split("#", 1)[0]
    host_path = bare.split("://", 1)[-1]
    local = SCHEMA_ROOT / host_path
    if local.is_file():
        return json.loads(local.read_text())  # type: ignore[no-any-return]
    known = _known()
    return known.get(bare) or known.get(bare.replace("https://", "http://"))


@functools.cache
def _registry() -> Any:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    def retrieve(uri: str) -> Any:
        schema = _held(uri)
        if schema is None:
            raise LookupError(f"schema {uri} is not held under tests/schemas (offline)")
        return Resource.from_contents(schema, default_specification=DRAFT7)

    return Registry(retrieve=retrieve)  # type: ignore[call-arg]


def schema_errors(doc: dict[str, Any], uri: str) -> list[str]:
    """Messages of every violation of the schema at ``uri`` by ``doc`` (empty: valid)."""
    import jsonschema

    schema = _held(uri)
    if schema is None:
        return [f"{uri}: schema not held under tests/schemas"]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator = cls(schema, registry=_registry())
    out = []
    for err in validator.iter_errors(doc):
        leaves = [err]
        if err.context:  # oneOf/anyOf: the nested causes say what is wrong
            leaves = sorted(err.context, key=lambda e: len(list(e.absolute_path)))[-3:]
        for leaf in leaves:
            where = "/".join(str(p) for p in leaf.absolute_path) or "(document)"
            out.append(f"{uri}: {where}: {leaf.message[:300]}")
    return out


def stac_errors(doc: dict[str, Any]) -> list[str]:
    """Violations of a STAC Item/Collection/Catalog (or ItemCollection: its envelope and
    every feature) against its core schema and each schema in ``stac_extensions``."""
    if doc.get("type") == "FeatureCollection":
        import jsonschema

        out = [
            f"ItemCollection: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(ITEM_COLLECTION).iter_errors(doc)
        ]
        for feature in doc.get("features") or []:
            out += [f"feature {feature.get('id')!r}: {m}" for m in stac_errors(feature)]
        return out
    kind = doc.get("type")
    core = CORE.get((str(kind), str(doc.get("stac_version"))))
    if core is None:
        return [f"no core schema for type {kind!r} at stac_version {doc.get('stac_version')!r}"]
    out = schema_errors(doc, core)
    for uri in doc.get("stac_extensions") or []:
        out += schema_errors(doc, uri)
    return out


def assert_valid(doc: dict[str, Any]) -> None:
    errors = stac_errors(doc)
    assert errors == [], "\n".join(errors)
