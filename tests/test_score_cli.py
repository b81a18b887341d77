"""``embcat score``: the planted class through the CLI, the sidecar, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from scoredata import examples, precision_recall, publish_block_scene

WATER, FOREST, CROPS, BARE, TOWN = 0, 1, 2, 3, 4


@pytest.fixture(scope="module")
def planted(tmp_path_factory, database_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    cid = f"scorecli-{uuid.uuid4().hex[:8]}"
    truth = publish_block_scene(tmp_path_factory.mktemp("blocks"), database_url, cid)
    yield cid, truth
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (cid,))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "embcat.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_cli_recovers_the_planted_class_and_saves_the_model(planted, tmp_path: Path) -> None:
    from embcat.cli import main

    cid, truth = planted
    pos, neg = examples(truth, TOWN, BARE)
    out = tmp_path / "towns.geojson"
    args = ["score", cid, "-p", pos[0], "-p", pos[1], "-n", neg[0], "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    precision, recall = precision_recall({f["id"] for f in doc["features"]}, truth, TOWN)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    sidecar = json.loads((tmp_path / "towns.geojson.model.json").read_text())
    assert [r["id"] for r in sidecar["positive"]] == pos
    assert sidecar["rows"] == len(doc["features"])
    assert "scored" in result.output


def test_cli_writes_geoparquet(planted, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from embcat.cli import main

    cid, truth = planted
    pos, neg = examples(truth, WATER, FOREST)
    out = tmp_path / "water.parquet"
    args = ["score", cid, "-p", pos[0], "-n", neg[0], "--top", "5", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).num_rows == 5


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["-o", "x.tiff"], ".geojson, .parquet or .png"),
        (["-o", "x.geojson", "--threshold", "0.5", "--top", "3"], "threshold"),
        (["-o", "x.geojson", "--filter", "((("], "filter"),
    ],
)
def test_cli_bad_arguments_give_one_line(planted, tmp_path: Path, extra, needle) -> None:
    cid, truth = planted
    extra = [str(tmp_path / e) if e.startswith("x.") else e for e in extra]
    done = run("score", cid, "-p", sorted(truth)[0], *extra)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_cli_unknown_example_names_it(planted, tmp_path: Path) -> None:
    cid, _truth = planted
    done = run("score", cid, "-p", "no-such-chip", "-o", str(tmp_path / "x.geojson"))
    assert done.returncode == 1 and "no-such-chip" in done.stderr
    assert not (tmp_path / "x.geojson").exists()
