"""``embcat encode`` with bad options or awkward sources: one clear line, or it just works."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from embcat.cli import main
from embcat.encoders.errors import EncoderOptionError
from embcat.encoders.registry import get_encoder


def _encode(scene: Path, out: Path, *args: str):
    return CliRunner().invoke(
        main,
        ["encode", str(scene), "-o", str(out), "--no-progress", "--workers", "0", *args],
    )


def _one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("num_features=abc", ("num_features", "integer", "'abc'")),
        ("patch_size=abc", ("patch_size", "integer", "'abc'")),
        ("seed=abc", ("seed", "integer", "'abc'")),
        ("chip_size=abc", ("chip_size", "integer", "'abc'")),
        ("bias=abc", ("bias", "number", "'abc'")),
    ],
)
def test_mosaiks_option_of_the_wrong_type_is_one_line(
    scene_factory: Callable[..., Path], tmp_path: Path, option: str, words: tuple[str, ...]
) -> None:
    line = _one_error_line(_encode(scene_factory(), tmp_path / "run", "-O", option))
    for word in words:
        assert word in line


def test_spectral_quantiles_that_are_not_numbers_are_one_line(
    scene_factory: Callable[..., Path], tmp_path: Path
) -> None:
    line = _one_error_line(
        _encode(scene_factory(), tmp_path / "run", "-e", "spectral-stats", "-O", "quantiles=abc")
    )
    assert "quantiles" in line and "'abc'" in line


def test_scaling_that_is_not_an_object_says_so() -> None:
    with pytest.raises(EncoderOptionError, match="scaling must be a JSON object") as err:
        get_encoder("mosaiks", scaling="abc")
    assert "keys: a, b, c" not in str(err.value)


def test_numbers_given_as_strings_are_converted() -> None:
    enc = get_encoder("mosaiks", num_features="8", seed="3", bias="0.5", chip_size="32")
    assert enc.output_spec.dimensions == 16 and enc.options["seed"] == 3


def test_mosaiks_takes_the_bands_of_a_six_band_raster(
    scene_factory: Callable[..., Path], tmp_path: Path
) -> None:
    result = _encode(scene_factory(bands=6), tmp_path / "run", "-O", "chip_size=32")
    assert result.exit_code == 0, result.output
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert '"B06"' in manifest and '"B07"' not in manifest


def test_bands_asked_for_and_missing_name_the_bands_option(
    scene_factory: Callable[..., Path], tmp_path: Path
) -> None:
    line = _one_error_line(
        _encode(scene_factory(bands=6), tmp_path / "run", "-O", "bands=B02,B03,B08")
    )
    assert "-O bands=" in line and "B08" in line


def test_a_degree_raster_does_not_compare_gsd_with_metres(
    scene_factory: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scene = scene_factory(crs="EPSG:4326", gsd=0.0001, origin=(11.0, 48.0))
    with caplog.at_level(logging.WARNING, logger="embcat.encode"):
        result = _encode(scene, tmp_path / "run", "-O", "chip_size=32")
    assert result.exit_code == 0, result.output
    assert not [r for r in caplog.records if "GSD" in r.getMessage()]


def test_a_metre_raster_far_from_the_gsd_still_warns(
    scene_factory: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scene = scene_factory(gsd=60.0)
    with caplog.at_level(logging.WARNING, logger="embcat.encode"):
        result = _encode(scene, tmp_path / "run", "-O", "chip_size=32")
    assert result.exit_code == 0, result.output
    assert [r for r in caplog.records if "GSD" in r.getMessage()]
