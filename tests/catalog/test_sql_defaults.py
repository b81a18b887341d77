"""The SQL functions' defaults are the API's (catalog.similarity.SimilaritySettings).

The functions are created by a migration (frozen text), so nothing keeps them in step
with the Python settings but this test: ef_search (default and cap), the iterative scan
mode, the scan budget, work_mem, the k bound, the exact-search bound and the binary
kinds' re-rank candidates and IVFFlat probes. It compares with the settings' code
defaults (``catalog.settings.defaults``), not with whatever the environment sets.
"""

from __future__ import annotations

import re

import psycopg
import pytest

from embcat.catalog.settings import defaults
from embcat.catalog.similarity import SimilaritySettings

DEFAULTS = defaults(SimilaritySettings)


def _function(conn: psycopg.Connection, name: str) -> tuple[dict[str, str], str]:
    rows = conn.execute(
        "select p.proconfig, p.prosrc from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'embcat' and p.proname = %s",
        (name,),
    ).fetchall()
    assert len(rows) == 1, f"embcat.{name} should exist once"
    config, source = rows[0]
    return dict(item.split("=", 1) for item in (config or [])), source


def test_similar_to_vector_sets_the_api_search_settings(conn: psycopg.Connection) -> None:
    config, _ = _function(conn, "_similar_to_vector")
    assert config["hnsw.ef_search"] == str(DEFAULTS.ef_search_default)
    assert config["hnsw.iterative_scan"] == DEFAULTS.iterative_scan
    assert config["hnsw.max_scan_tuples"] == str(DEFAULTS.max_scan_tuples)
    assert config["work_mem"] == f"{DEFAULTS.work_mem_mb}MB"
    assert config["jit"] == "off"


def test_ef_search_follows_the_api_rule(conn: psycopg.Connection) -> None:
    """max(2k, ef_search_default), at most ef_search_max (as catalog.similarity)."""
    _, source = _function(conn, "_similar_to_vector")
    rule = re.search(r"least\(greatest\(2 \* k, (\d+)\), (\d+)\)", source)
    assert rule is not None
    assert (int(rule[1]), int(rule[2])) == (DEFAULTS.ef_search_default, DEFAULTS.ef_search_max)


def test_exact_bound_is_the_api_one(conn: psycopg.Connection) -> None:
    _, source = _function(conn, "_similar_to_vector")
    bound = re.search(r"greatest\((\d+), ([0-9.]+) \* greatest\(reltuples, 0\)[,)]", source)
    assert bound is not None
    assert int(bound[1]) == DEFAULTS.exact_threshold
    assert float(bound[2]) == pytest.approx(DEFAULTS.exact_fraction)


def test_exact_bound_is_sqrt_candidates_times_n_for_every_kind(conn: psycopg.Connection) -> None:
    """As catalog.similarity_rank._exact_bar (migration 0027): no kind is left out."""
    _, source = _function(conn, "_similar_to_vector")
    rule = re.search(
        r"greatest\(\d+, [0-9.]+ \* greatest\(reltuples, 0\),\s*"
        r"sqrt\(greatest\((\d+), (\d+) \* k\) \* greatest\(reltuples, 0\)\)\)",
        source,
    )
    assert rule is not None
    assert (int(rule[1]), int(rule[2])) == (DEFAULTS.rerank_candidates, DEFAULTS.rerank_factor)


@pytest.mark.parametrize("name", ["similar", "similar_to_vector"])
def test_k_bound_is_the_api_max_k(conn: psycopg.Connection, name: str) -> None:
    _, source = _function(conn, name)
    bound = re.search(r"k IS NULL OR k < 1 OR k > (\d+)", source)
    assert bound is not None
    assert int(bound[1]) == DEFAULTS.max_k


def test_binary_kinds_rerank_as_the_api(conn: psycopg.Connection) -> None:
    """max(rerank_candidates, rerank_factor * k) candidates; ivfflat.probes."""
    config, source = _function(conn, "_similar_to_vector")
    rule = re.search(r"candidates := greatest\((\d+), (\d+) \* k\)", source)
    assert rule is not None
    assert (int(rule[1]), int(rule[2])) == (DEFAULTS.rerank_candidates, DEFAULTS.rerank_factor)
    assert config["ivfflat.probes"] == str(DEFAULTS.ivfflat_probes)


def test_defaults_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What this test compares with (and what a library call without settings uses) are
    the code's defaults, whatever EMBCAT_SIMILARITY_* say."""
    monkeypatch.setenv("EMBCAT_SIMILARITY_EF_SEARCH_DEFAULT", "77")
    assert SimilaritySettings().ef_search_default == 77
    declared = SimilaritySettings.model_fields["ef_search_default"].default
    assert defaults(SimilaritySettings).ef_search_default == declared != 77
