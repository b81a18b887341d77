"""Fixtures for the encoder tests: tiny seeded scenes and a real third-party plugin dist."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:  # the shared helpers live in tests/
    sys.path.insert(0, str(TESTS_DIR))

from encoders_testkit import PLUGIN_SOURCE, write_dist  # noqa: E402
from rasterdata import make_scene  # noqa: E402


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding the ``embcat-testplugin`` distribution (not yet on sys.path)."""
    return write_dist(
        tmp_path_factory.mktemp("plugin"),
        "embcat-testplugin",
        "embcat_testplugin",
        PLUGIN_SOURCE,
        {
            "tiny-mean": "embcat_testplugin:TinyMeanEncoder",
            "flaky-mosaiks": "embcat_testplugin:FlakyMosaiks",
        },
    )


@pytest.fixture
def plugin(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test plugin installed (its directory on sys.path) for one test."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    return plugin_dir


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small 13-band scenes (96x64 and 64x64 px: 6 + 4 chips of 32 px)."""
    root = tmp_path_factory.mktemp("scenes")
    make_scene(root / "a.tif", width=96, height=64, seed=1)
    make_scene(root / "b.tif", width=64, height=64, seed=2)
    return root


@pytest.fixture
def scene_factory(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "scene.tif", **kwargs: object) -> Path:
        kwargs.setdefault("width", 64)
        kwargs.setdefault("height", 64)
        return make_scene(tmp_path / "in" / name, **kwargs)  # type: ignore[arg-type]

    return make
