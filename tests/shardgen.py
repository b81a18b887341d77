"""Seeded shards + manifest written straight from the contract in encoders/manifest.py.

Fast unit tests of the publish job use these instead of running an encoder (no torch):
``write_run(dir, n, dims, seed)`` writes ``shards`` GeoParquet files of chips on a regular
grid in UTM zone 33N (EPSG:32633) reprojected to WGS84, and a ``manifest.json`` with the
right checksums. ``mutate`` hooks let a test break one row on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import Transformer

from embcat.encoders.manifest import (
    EncoderIdentity,
    Manifest,
    RunParameters,
    ShardRecord,
    geo_metadata,
    make_space_options,
    options_sha256,
    sha256_file,
    shard_name,
    shard_schema,
)

ORIGIN_X, ORIGIN_Y = 500_000.0, 5_400_000.0  # EPSG:32633, central Europe
PIXEL = 10.0


def chip_rows(
    start: int,
    count: int,
    dims: int,
    seed: int,
    *,
    chip_size: int = 64,
    per_row: int = 100,
    dtype: str = "float32",
    id_prefix: str = "chip",
    block_rows: int | None = None,
) -> dict[str, Any]:
    """Columns (as Python/numpy values) of chips ``start .. start+count-1``.

    The grid is ``per_row`` chips wide and grows southwards; with ``block_rows`` every
    block of that many chips starts a new strip east of the previous one (a 10M grid of
    100-chip rows would otherwise run 64,000 km south, past the valid UTM northings).
    """
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    idx = np.arange(start, start + count)
    within = idx if block_rows is None else idx % block_rows
    strip = 0 if block_rows is None else idx // block_rows
    col = (within % per_row + strip * per_row) * chip_size
    row = (within // per_row) * chip_size
    x0 = ORIGIN_X + col * PIXEL
    y1 = ORIGIN_Y - row * PIXEL
    size = chip_size * PIXEL
    xs = np.stack([x0, x0 + size, x0 + size, x0, x0], axis=1)
    ys = np.stack([y1 - size, y1 - size, y1, y1, y1 - size], axis=1)
    lon, lat = to_wgs84.transform(xs, ys)
    polygons = shapely.polygons(np.stack([lon, lat], axis=2))
    rng = np.random.default_rng([seed, start])
    emb = rng.standard_normal((count, dims)).astype(np.float32)
    base = datetime(2024, 6, 1, 10, 30, tzinfo=UTC)
    scene = idx // (per_row * per_row)
    return {
        "id": [f"{id_prefix}-{i:08d}" for i in idx],
        "geometry": list(shapely.to_wkb(polygons)),
        "datetime": [base + timedelta(days=int(s)) for s in scene],
        "source_item": [f"scene-{s:03d}" for s in scene],
        "source_asset": ["image"] * count,
        "source_href": [f"/data/scene-{s:03d}.tif" for s in scene],
        "source_crs": ["EPSG:32633"] * count,
        "window_col": (col % (per_row * chip_size)).astype(np.int32).tolist(),
        "window_row": (row % (per_row * chip_size)).astype(np.int32).tolist(),
        "window_width": [chip_size] * count,
        "window_height": [chip_size] * count,
        "nodata_fraction": [0.0] * count,
        "embedding": emb.astype(np.float16 if dtype == "float16" else np.float32),
    }


def table_from_rows(columns: dict[str, Any], dims: int, dtype: str) -> pa.Table:
    schema = shard_schema(dims, dtype)  # type: ignore[arg-type]
    arrays = []
    for field in schema:
        values = columns[field.name]
        if field.name == "embedding":
            flat = pa.array(np.asarray(values).reshape(-1), type=field.type.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, dims))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_run(
    directory: Path,
    n: int,
    dims: int = 16,
    seed: int = 0,
    *,
    shards: int = 2,
    dtype: Literal["float32", "float16"] = "float32",
    encoder: str = "test-encoder",
    version: str = "1.0",
    id_prefix: str = "chip",
    mutate: Callable[[int, dict[str, Any]], None] | None = None,
    row_group_size: int = 1000,
    options: dict[str, Any] | None = None,
    chip_size: int = 64,
) -> Path:
    """Write ``n`` chips in ``shards`` shards and the manifest; return the directory.

    ``mutate(rank, columns)`` may edit a shard's columns before it is written (to make
    bad input); the manifest still records the checksums of the files as written.
    ``options``: the encoder options the manifest records, with the canonical space
    options and their sha256 as the encode job writes them (None: a manifest that records
    neither, as older runs and other tools write). ``chip_size``: the run's.
    """
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    per = -(-n // shards) if n else 0
    for rank in range(shards):
        start, stop = rank * per, min(n, (rank + 1) * per)
        columns = chip_rows(
            start, max(stop - start, 0), dims, seed, dtype=dtype, id_prefix=id_prefix
        )
        if mutate is not None:
            mutate(rank, columns)
        table = table_from_rows(columns, dims, dtype)
        meta = dict(table.schema.metadata or {})
        meta[b"geo"] = json.dumps(geo_metadata()).encode()
        table = table.replace_schema_metadata(meta)
        path = directory / shard_name(rank, shards)
        pq.write_table(table, path, row_group_size=row_group_size)
        records.append(
            ShardRecord(
                path=path.name,
                rank=rank,
                rows=table.num_rows,
                bytes=path.stat().st_size,
                sha256=sha256_file(path),
            )
        )
    space: dict[str, Any] = {}
    if options is not None:
        bands = options.get("bands", ["B04", "B03", "B02"])
        canonical = make_space_options(
            name=encoder,
            version=version,
            dimensions=dims,
            metric="cosine",
            normalized=False,
            bands=bands,
            chip_size=chip_size,
            scaling=options.get("scaling", {"type": "scale", "value": 10000.0}),
            options=options,
        )
        space = {
            "space_options": canonical,
            "space_sha256": options_sha256(canonical),
            "options": options,
        }
    manifest = Manifest(
        created=datetime(2024, 6, 2, 12, 0, tzinfo=UTC),
        encoder=EncoderIdentity(
            **space,
            name=encoder,
            version=version,
            dimensions=dims,
            dtype=dtype,
            bands=["B04", "B03", "B02"],
            chip_size=chip_size,
            gsd=10.0,
            mlm={
                "mlm:name": encoder,
                "mlm:architecture": "random projection",
                "mlm:tasks": ["similarity-search"],
                "mlm:framework": "pytorch",
                "mlm:input": [],
                "mlm:output": [],
                **({"mlm:hyperparameters": options} if options else {}),
            },
        ),
        run=RunParameters(
            encoder_options=options or {},
            chip_size=chip_size,
            stride=64,
            bands=["B04", "B03", "B02"],
            grid_id="EPSG:32633/64/64",
            world_size=shards,
            batch_size=32,
            inputs=["/data/scene-000.tif"],
        ),
        software={"embcat": "0.1.0"},
        shards=records,
        rows=sum(r.rows for r in records),
        # what the chips cover: 64 x 64 pixels x 3 bands of uint16
        source_bytes=sum(r.rows for r in records) * 64 * 64 * 3 * 2,
    )
    manifest.dump(directory)
    return directory
