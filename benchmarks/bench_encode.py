"""Encode benchmark: ``mosaiks`` throughput on 256x256 chips of a 13-band scene, on CPU.

Measured side by side in one run, on the same seeded scene (``tests/rasterdata.make_scene``,
uint16, deflate, 256 px tiles) and the same chips:

* ``read``: the job's own reader (rasterio windowed reads, nodata check, DataLoader with
  ``--workers`` processes) without encoding: the I/O limit of the encode rate;
* ``encode-only``: the encoder on chips already in memory (compute limit);
* ``encode job``: ``encoders.job.run_encode`` end to end (read + encode + GeoParquet
  shard + manifest), which is what ``embcat encode`` runs.

Peak RSS comes from ``resource.getrusage`` (this process, and the reader processes).
Prints a table and writes ``benchmarks/results/encode.json``; never asserts a time::

    .venv/bin/python benchmarks/bench_encode.py                # 2048x2048 scene, 64 chips
    .venv/bin/python benchmarks/bench_encode.py --size 1024 --num-features 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from embcat.encoders.grid import plan_chips  # noqa: E402
from embcat.encoders.job import _ChipDataset, _collate, run_encode  # noqa: E402
from embcat.encoders.registry import get_encoder  # noqa: E402
from embcat.encoders.sources import ChipReader, resolve_inputs  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (reader processes)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args) -> dict:
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn(*args)
    return {**out, "wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}


def peak_rss_mb() -> dict[str, float]:
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def read_rate(scene: Path, bands: list[str], chip: int, workers: int, repeats: int) -> dict:
    sources = resolve_inputs([scene], bands)
    chips = plan_chips(sources, chip, chip)
    best = float("inf")
    for _ in range(repeats):
        reader = ChipReader(sources)
        loader = torch.utils.data.DataLoader(
            _ChipDataset(reader, chips, 0.5),
            batch_size=16,
            num_workers=workers,
            collate_fn=_collate,
            prefetch_factor=4 if workers else None,
        )
        t0 = time.perf_counter()
        n = sum(batch["count"] for batch in loader)
        best = min(best, time.perf_counter() - t0)
        reader.close()
    return {"chips": n, "seconds": best, "chips_per_s": n / best}


def encode_only_rate(encoder_name: str, options: dict, scene: Path, chip: int, repeats: int):
    enc = get_encoder(encoder_name, **options)
    sources = resolve_inputs([scene], list(enc.input_spec.bands))
    chips = plan_chips(sources, chip, chip)
    reader = ChipReader(sources)
    batch = torch.from_numpy(
        np.stack([reader.read(c.source, c.col, c.row, c.size)[0] for c in chips])
    )
    reader.close()
    best = float("inf")
    with torch.inference_mode():
        enc(batch[:2])  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            for start in range(0, len(batch), 16):
                enc(batch[start : start + 16])
            best = min(best, time.perf_counter() - t0)
    return {"chips": len(chips), "seconds": best, "chips_per_s": len(chips) / best}


def job_rate(encoder_name: str, options: dict, scene: Path, out: Path, workers: int) -> dict:
    t0 = time.perf_counter()
    result = run_encode(
        [scene],
        out,
        encoder_name,
        options,
        workers=workers,
        batch_size=16,
        device="cpu",
        progress=False,
        resume=False,
    )
    seconds = time.perf_counter() - t0
    assert result.manifest is not None
    return {
        "chips": result.rows + result.skipped_nodata,
        "seconds": seconds,
        "chips_per_s": (result.rows + result.skipped_nodata) / seconds,
        "shard_bytes": sum(s.bytes for s in result.manifest.shards),
        "source_bytes": result.manifest.source_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="scene width = height (px)")
    ap.add_argument("--chip", type=int, default=256)
    ap.add_argument("--num-features", type=int, default=256, help="MOSAIKS K (2K dims)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        tmpdir = Path(tmp)
        t0 = time.perf_counter()
        scene = tmpdir / "scene.tif"
        code = (
            "import sys; sys.path[:0] = sys.argv[1:3]; from rasterdata import make_scene; "
            "make_scene(sys.argv[3], bands=13, width=int(sys.argv[4]), height=int(sys.argv[4]),"
            " blocksize=256)"
        )
        # In a child process: generating the scene must not count in this peak RSS.
        subprocess.run(
            [sys.executable, "-c", code, str(ROOT), str(ROOT / "tests"), str(scene),
             str(args.size)],
            check=True,
        )  # fmt: skip
        gen_s = time.perf_counter() - t0
        options = {"num_features": args.num_features, "chip_size": args.chip}
        bands = list(get_encoder("mosaiks", **options).input_spec.bands)
        rows = []
        for workers in sorted({0, args.workers}):
            r = timed(read_rate, scene, bands, args.chip, workers, args.repeats)
            rows.append({"what": f"read (workers={workers})", **r})
        r = timed(job_rate, "mosaiks", options, scene, tmpdir / "out", args.workers)
        rows.append({"what": f"mosaiks encode job (workers={args.workers})", **r})
        rss_job = peak_rss_mb()
        stats = {"chip_size": args.chip}
        r = timed(job_rate, "spectral-stats", stats, scene, tmpdir / "out-stats", args.workers)
        rows.append({"what": f"spectral-stats encode job (workers={args.workers})", **r})
        r = timed(encode_only_rate, "mosaiks", options, scene, args.chip, args.repeats)
        rows.append({"what": f"mosaiks encode-only (K={args.num_features})", **r})
        scene_bytes = scene.stat().st_size

    read_limit = max(r["chips_per_s"] for r in rows if r["what"].startswith("read"))
    print(
        f"\nscene {args.size}x{args.size} px, 13 bands uint16 ({scene_bytes / 1e6:.1f} MB "
        f"deflate, made in {gen_s:.1f} s), chips {args.chip} px, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs\n"
    )
    print(
        f"{'measurement':<44} {'chips':>6} {'seconds':>8} {'chips/s':>8} {'% of read':>9} "
        f"{'CPU s/chip':>10}"
    )
    for r in rows:
        share = 100 * r["chips_per_s"] / read_limit
        r["cpu_s_per_chip"] = (
            r["cpu_s"] / r["chips"] / (args.repeats if "job" not in r["what"] else 1)
        )
        print(
            f"{r['what']:<44} {r['chips']:>6} {r['seconds']:>8.2f} {r['chips_per_s']:>8.1f} "
            f"{share:>8.0f}% {r['cpu_s_per_chip']:>10.3f}"
        )
    rss = peak_rss_mb()
    print(
        f"\npeak RSS: {rss_job['self']:.0f} MB after the mosaiks job (reads included), "
        f"{rss['self']:.0f} MB at the end (encode-only holds all chips), readers "
        f"{rss['children']:.0f} MB"
    )
    report = {
        "benchmark": "encode",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "params": vars(args) | {"scene_bytes": scene_bytes, "bands": 13},
        "results": rows,
        "read_limit_chips_per_s": read_limit,
        "peak_rss_mb": {"after_job": rss_job, "end": rss},
    }
    out = ROOT / "benchmarks" / "results" / "encode.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
