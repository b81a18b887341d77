"""Property-based fuzzing of every operation in the OpenAPI document (schemathesis, bounded
examples) against the live API over a small loaded collection: no answer is a 5xx.

Write operations are fuzzed without a key (they must answer 401/4xx, never 5xx)."""

from __future__ import annotations

import re

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

MAX_EXAMPLES = 8


def _openapi() -> dict:
    """The OpenAPI document of the app as ``create_app`` builds it (nothing connects)."""
    from api.app import create_app
    from api.settings import ApiSettings

    return create_app(ApiSettings(database_url="postgresql://unused@127.0.0.1:1/x")).openapi()


# Loaded at collection time from the document itself (schemathesis' lazy fixture loader does
# not work with pytest 9); the requests go to the live server of the session.
# Only the fuzzing phase (positive and negative data), bounded by MAX_EXAMPLES per
# operation; the coverage phase enumerates boundary values without a bound.
CONFIG = SchemathesisConfig.from_dict(
    {"phases": {"coverage": {"enabled": False}, "examples": {"enabled": False}}}
)
# Every operation is fuzzed; test_openapi_declares_every_path_parameter checks that each
# declares its path parameters (an undeclared one could not be generated).
OPENAPI = _openapi()
UNDECLARED = [
    (method, path)
    for path, methods in OPENAPI["paths"].items()
    for method, op in methods.items()
    if set(re.findall(r"\{(\w+)\}", path))
    - {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
]
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)


def test_openapi_declares_every_path_parameter() -> None:
    assert UNDECLARED == []


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: schemathesis.Case, rel_server: str) -> None:
    case.call_and_validate(base_url=rel_server, checks=[not_a_server_error], timeout=30)
