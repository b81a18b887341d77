"""The settings tree (issue 16, item 5): built once by create_app, passed down; library
calls without settings use the code defaults, never the environment."""

from __future__ import annotations

import dataclasses

import pytest

from embcat.api.app import create_app
from embcat.api.settings import ApiSettings, AppSettings
from embcat.catalog.settings import Settings
from embcat.catalog.similarity import SimilaritySettings
from embcat.catalog.store.spaces import default_kind


def test_create_app_reads_the_environment_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBCAT_SIMILARITY_MAX_K", "123")
    app = create_app(ApiSettings(database_url=database_url))
    monkeypatch.setenv("EMBCAT_SIMILARITY_MAX_K", "456")  # after the build: not seen
    tree = app.state.app_settings
    assert isinstance(tree, AppSettings)
    assert tree.similarity.max_k == 123
    assert app.state.similarity_settings is tree.similarity
    assert app.state.upload_settings is tree.uploads
    assert tree.database is tree.api is app.state.settings


def test_create_app_takes_a_whole_tree(database_url: str) -> None:
    tree = AppSettings.from_env(ApiSettings(database_url=database_url))
    tree = dataclasses.replace(tree, similarity=SimilaritySettings(max_k=5))
    app = create_app(tree)
    assert app.state.similarity_settings.max_k == 5


def test_the_catalogue_tree_has_one_home_for_each_section() -> None:
    names = [f.name for f in dataclasses.fields(Settings)]
    assert names == ["database", "similarity", "index", "mirror"]
    app_names = [f.name for f in dataclasses.fields(AppSettings)]
    assert app_names == [*names, "api", "uploads", "observability"]


def test_a_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from embcat.catalog.errors import InvalidInput

    monkeypatch.setenv("EMBCAT_HNSW_M", "many")
    with pytest.raises(InvalidInput, match="EMBCAT_HNSW_M='many'"):
        Settings.from_env()


def test_library_defaults_do_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBCAT_HNSW_KIND", "hnsw-bit")
    assert default_kind(768) == "ivfflat-bit"  # the code's "auto", not the variable
    assert default_kind(768, Settings.from_env().index.kind) == "hnsw-bit"
