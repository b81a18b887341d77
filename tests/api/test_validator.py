"""stac-api-validator against the live server, schemas served offline (see offline_schemas)."""

from __future__ import annotations

import json
import logging

import psycopg
from offline_schemas import NOT_THROUGH_PYSTAC, UNCHECKED, install

from embcat.catalog.keys import create_key

CLASSES = [
    "core",
    "collections",
    "features",
    "item-search",
    "filter",
    "item-search#sort",
    "item-search#fields",
    "item-search#query",
    "features#sort",
    "features#fields",
    "features#query",
    "transaction",
]


def test_stac_api_validator_passes(own_server, own_seeded, own_database, capsys) -> None:
    """On a database of its own (tests/api/conftest.py): it walks every collection."""
    from stac_api_validator.validations import QueryConfig, validate_api

    install()
    live_server, (cid, items) = own_server, own_seeded
    with psycopg.connect(own_database) as conn:
        _, secret = create_key(conn, "validator", ["write"], collection_id=cid)
    logging.getLogger("stac_validator").setLevel(logging.WARNING)
    geometry = json.dumps(items[0]["geometry"])
    cover = str(items[0]["properties"]["eo:cloud_cover"])
    warnings, errors = validate_api(
        root_url=live_server + "/",
        ccs_to_validate=CLASSES,
        collection=cid,
        geometry=geometry,
        auth_bearer_token=secret,
        auth_query_parameter=None,
        fields_nested_property="properties.platform",
        validate_pagination=True,
        query_config=QueryConfig(
            query_comparison_field="eo:cloud_cover",
            query_eq_value=cover,
            query_neq_value=cover,
            query_lt_value="50",
            query_lte_value="50",
            query_gt_value="50",
            query_gte_value="50",
            query_substring_field="platform",
            query_starts_with_value="sentinel",
            query_ends_with_value="2a",
            query_contains_value="inel",
            query_in_field="keywords",
            query_in_values="water,crop",
        ),
        transaction_collection=cid,
        headers=None,
        open_assets_urls=False,
    )
    with capsys.disabled():
        print(
            f"\nstac-api-validator: {len(list(warnings))} warnings; extension schemas not checked"
            f" offline: {sorted(UNCHECKED) or 'none'}; not applicable through pystac (checked"
            f" on the served JSON by test_metadata.py): {sorted(NOT_THROUGH_PYSTAC)}"
        )
    assert list(errors) == [], "\n".join(str(e) for e in errors)
