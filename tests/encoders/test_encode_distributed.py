"""torchrun: 2 ranks (gloo) give exactly the 1-process embeddings, and resume after a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from encoders_testkit import MOSAIKS_SMALL

from embcat.encoders.job import run_encode
from embcat.encoders.manifest import Manifest, sha256_file


def _torchrun(args: list[str], plugin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.getcwd()])}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "embcat.cli", "encode", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _rows(out: Path) -> dict[str, tuple[list[float], bytes]]:
    rows: dict[str, tuple[list[float], bytes]] = {}
    for shard in sorted(out.glob("shard-*.parquet")):
        for r in pq.read_table(shard).to_pylist():
            rows[r["id"]] = (r["embedding"], r["geometry"])
    return rows


@pytest.fixture(scope="module")
def runs(scene_dir: Path, plugin_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 2-rank run that crashes on rank 1, then the same command again (resume)."""
    tmp = tmp_path_factory.mktemp("dist")
    marker = tmp / "crash-rank-1"
    marker.touch()
    options = {**MOSAIKS_SMALL, "fail_marker": str(marker)}
    out = tmp / "out"
    args = [str(scene_dir), "-o", str(out), "-e", "flaky-mosaiks", "--workers", "1",
            "--batch-size", "2", "--no-progress"]  # fmt: skip
    for key, value in options.items():
        args += ["-O", f"{key}={json.dumps(value)}"]
    crashed = _torchrun(args, plugin_dir)
    state = {
        "files": sorted(p.name for p in out.iterdir()),
        "shard0": (out / "shard-00000-of-00002.parquet").stat().st_mtime_ns
        if (out / "shard-00000-of-00002.parquet").exists()
        else None,
    }
    marker.unlink()
    resumed = _torchrun(args, plugin_dir)
    # The reference: the same encoder in this (single) process.
    sys.path.insert(0, str(plugin_dir))
    try:
        run_encode([scene_dir], tmp / "single", "flaky-mosaiks", options, workers=0,
                   progress=False)  # fmt: skip
    finally:
        sys.path.remove(str(plugin_dir))
    return crashed, state, resumed, out, tmp / "single"


def test_a_crashed_rank_leaves_the_others_shards_and_no_manifest(runs) -> None:
    crashed, state, *_ = runs
    assert crashed.returncode != 0
    assert "simulated crash on rank 1" in crashed.stderr
    assert state["files"] == ["shard-00000-of-00002.parquet"]  # complete shards only


def test_the_rerun_reuses_the_complete_shard_and_writes_the_manifest(runs) -> None:
    _, state, resumed, out, _ = runs
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "shard-00000-of-00002.parquet").stat().st_mtime_ns == state["shard0"]
    summary = resumed.stdout.strip().splitlines()[-1]
    assert (
        summary.startswith("encoded 10 chips with flaky-mosaiks") and "1 shard(s) reused" in summary
    )
    manifest = Manifest.load(out)
    assert manifest.run.world_size == 2 and manifest.rows == 10
    assert [s.path for s in manifest.shards] == [
        "shard-00000-of-00002.parquet", "shard-00001-of-00002.parquet",
    ]  # fmt: skip
    assert [s.rows for s in manifest.shards] == [5, 5]
    for shard in manifest.shards:
        assert shard.sha256 == sha256_file(out / shard.path)


def test_two_ranks_give_exactly_the_single_process_embeddings(runs) -> None:
    *_, out, single = runs
    two, one = _rows(out), _rows(single)
    assert list(two) == list(one)  # same chips, same order across the shards
    for chip_id, (embedding, geometry) in one.items():
        np.testing.assert_array_equal(np.array(two[chip_id][0]), np.array(embedding))
        assert two[chip_id][1] == geometry
