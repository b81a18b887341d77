"""Thumbnail and quicklook test data: shardgen runs given a thumbnail column and scene
quicklook files with their manifest records (no encoder, no torch)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embcat.encoders.manifest import THUMBNAIL_COLUMN, Manifest, ShardRecord, sha256_file
from embcat.encoders.thumbnails import png_bytes


def tiny_png(seed: int) -> bytes:
    rgba = np.random.default_rng(seed).integers(0, 256, size=(4, 4, 4), dtype=np.uint8)
    return png_bytes(rgba)


def add_thumbnails(run: Path, make: Callable[[int, str], bytes | None]) -> dict[str, bytes]:
    """Give every shard of ``run`` a thumbnail column (``make(row, id)``) and fix the
    manifest's sizes and checksums; returns {id: png} of the rows that got one."""
    manifest = Manifest.load(run)
    made: dict[str, bytes] = {}
    records = []
    for rec in manifest.shards:
        path = run / rec.path
        table = pq.read_table(path)
        ids = table.column("id").to_pylist()
        values = [make(k, i) for k, i in enumerate(ids)]
        made.update({i: v for i, v in zip(ids, values, strict=True) if v is not None})
        table = table.append_column(THUMBNAIL_COLUMN, pa.array(values, pa.binary()))
        pq.write_table(table, path)
        records.append(
            ShardRecord(
                path=rec.path, rank=rec.rank, rows=rec.rows,
                bytes=path.stat().st_size, sha256=sha256_file(path),
            )
        )  # fmt: skip
    manifest.shards = records
    manifest.dump(run)
    return made


def add_quicklook(run: Path, key: str = "scene-000", data: bytes | None = None) -> bytes:
    png = data if data is not None else tiny_png(99)
    (run / "quicklooks").mkdir(exist_ok=True)
    (run / "quicklooks" / f"{key}.png").write_bytes(png)
    manifest = Manifest.load(run)
    extra = manifest.model_extra or {}
    looks = list(extra.get("quicklooks") or [])
    looks.append(
        {
            "key": key, "source_item": key, "path": f"quicklooks/{key}.png",
            "bbox": [15.0, 48.7, 15.1, 48.8], "crs": "EPSG:3857", "width": 4, "height": 4,
            "bytes": len(png), "sha256": hashlib.sha256(png).hexdigest(),
            "acquired": "2024-06-01T00:00:00Z",
        }
    )  # fmt: skip
    manifest = Manifest.model_validate({**manifest.model_dump(mode="json"), "quicklooks": looks})
    manifest.dump(run)
    return png
