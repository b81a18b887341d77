"""The registry: one entry-point group for built-ins and plugins, duplicates refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from encoders_testkit import write_dist
from pystac.extensions.mlm import MLMExtension

from embcat.cli import main
from embcat.encoders.errors import DuplicateEncoder, EncoderNotFound, EncoderOptionError
from embcat.encoders.registry import discover, get_encoder, list_encoders


def test_builtins_come_through_the_entry_point_group() -> None:
    entries = discover()
    for name in ("mosaiks", "spectral-stats", "checkpoint"):
        assert entries[name].distribution.startswith("embcat ")
        assert entries[name].entry_point.group == "embcat.encoders"


def test_a_plugin_distribution_is_discovered_and_used(plugin: Path) -> None:
    assert "tiny-mean" in list_encoders()
    assert discover()["tiny-mean"].distribution == "embcat-testplugin 0.1"
    enc = get_encoder("tiny-mean", bands="B04,B08", chip_size=4)
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    assert torch.equal(enc(x), x.mean(dim=(2, 3)))


def test_a_duplicate_name_is_refused(plugin: Path, tmp_path: Path, monkeypatch) -> None:
    dupe = write_dist(
        tmp_path / "dupe",
        "evil-plugin",
        "evil_plugin",
        "from embcat_testplugin import TinyMeanEncoder as Other\n",
        {"mosaiks": "evil_plugin:Other"},
    )
    monkeypatch.syspath_prepend(str(dupe))
    with pytest.raises(DuplicateEncoder, match="'mosaiks' is registered twice") as err:
        get_encoder("mosaiks")
    assert "embcat.encoders.mosaiks:MosaiksEncoder" in str(err.value)
    assert "evil_plugin:Other (from evil-plugin 0.1)" in str(err.value)


def test_unknown_encoder_names_the_registered_ones() -> None:
    with pytest.raises(EncoderNotFound, match="no encoder named 'nope'.*mosaiks"):
        get_encoder("nope")


def test_bad_options_are_refused() -> None:
    with pytest.raises(EncoderOptionError, match="unexpected keyword argument 'colour'"):
        get_encoder("mosaiks", colour="red")
    with pytest.raises(EncoderOptionError, match="num_features must be positive"):
        get_encoder("mosaiks", num_features=0)


def test_cli_lists_encoders_as_a_table(plugin: Path) -> None:
    result = CliRunner().invoke(main, ["encoders", "list"])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:4] == ["NAME", "VERSION", "DIMS", "BANDS"]
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["mosaiks"][1:5] == ["1.0", "512", "13", "256"]
    assert by_name["tiny-mean"][1:3] == ["0.1", "3"]
    assert by_name["checkpoint"][2] == "-"  # needs a path: no defaults to show


def test_cli_show_prints_mlm_metadata_readable_by_pystac() -> None:
    result = CliRunner().invoke(
        main, ["encoders", "show", "mosaiks", "-O", "num_features=4", "-O", "bands=B04,B03"]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["output"]["dimensions"] == 8
    assert shown["entry_point"]["value"] == "embcat.encoders.mosaiks:MosaiksEncoder"
    import pystac

    item = pystac.Item("m", None, None, pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"), {})
    item.properties.update(shown["mlm"])
    item.stac_extensions.append(MLMExtension.get_schema_uri())
    mlm = MLMExtension.ext(item)
    assert mlm.mlm_name == "mosaiks"
    assert mlm.tasks == ["similarity-search"]
    assert [b.name for b in mlm.input[0].bands] == ["B04", "B03"]
    assert mlm.input[0].input.shape == [-1, 2, -1, -1]
    assert mlm.output[0].result.shape == [-1, 8]
    assert mlm.output[0].result.dim_order == ["batch", "embedding"]
    assert mlm.framework == "PyTorch" and mlm.pretrained is False


def test_cli_show_reports_bad_options_without_traceback() -> None:
    result = CliRunner().invoke(main, ["encoders", "show", "checkpoint"])
    assert result.exit_code == 1
    assert "option 'path' (the model file) is required" in result.output


def test_the_manifest_contract_imports_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, encoders.manifest; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
