"""A SIGKILLed ``embcat encode`` (a real process kill, not an exception) leaves no shard and
no manifest, only a temporary file that the rerun removes; the rerun completes with every
chip exactly once. (Publish and mirror kills: tests/catalog/test_publish_atomic.py and
tests/test_mirror_e2e.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from rasterdata import make_scene

from embcat.encoders.manifest import MANIFEST_NAME, Manifest

CHIP = 32
SIZE = 384  # (384 / 32)^2 = 144 chips


def test_sigkilled_encode_resumes_without_duplicates(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene.tif", width=SIZE, height=SIZE, seed=5, nodata=None)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "embcat.cli", "encode", str(scene), "-o", str(out)]
    cmd += ["-O", "num_features=8", "--chip-size", str(CHIP), "--batch-size", "4"]
    cmd += ["--workers", "0", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    partial: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in out.glob(".*.tmp-*") if p.stat().st_size > 0] if out.exists() else []
        if partial:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the encode finished before it could be killed"
    assert partial and not (out / MANIFEST_NAME).exists()
    assert not list(out.glob("shard-*.parquet"))

    from embcat.encoders.job import run_encode  # the rerun in-process: same job, no second start-up

    run_encode(
        [scene], out, "mosaiks", {"num_features": 8},
        chip_size=CHIP, batch_size=4, workers=0, device="cpu", progress=False,
    )  # fmt: skip
    manifest = Manifest.load(out)
    ids = pq.read_table(out / manifest.shards[0].path, columns=["id"]).column("id").to_pylist()
    assert manifest.rows == len(ids) == (SIZE // CHIP) ** 2
    assert len(set(ids)) == len(ids)
    assert not list(out.glob(".*.tmp-*"))
