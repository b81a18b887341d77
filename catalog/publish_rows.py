"""Publish row validation: every record batch of the shards is checked, vectorised.

``validate_batch`` checks one batch against the rules the catalogue holds every item to
(ids, geometry as catalog.geometry's rule, datetime range, pixel windows, nodata
fraction, finite vectors as stored, thumbnails) and returns the stored values and the
batch's extent; ``Problems`` names the first offending rows (MAX_REPORTED).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from embcat.catalog import imagery
from embcat.catalog.geometry import INVALID, LAT_RANGE, LON_RANGE, MAX_VERTICES, OUT_OF_RANGE
from embcat.catalog.publish_input import MAX_REPORTED, REQUIRED_COLUMNS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_US = -2_208_988_800_000_000  # 1900-01-01
_MAX_US = 4_102_444_800_000_000  # 2100-01-01


@dataclass
class Problems:
    rows: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, shard: str, offset: int, ids: pa.Array, rows: np.ndarray, what: str) -> None:
        for r in rows.tolist():
            self.count += 1
            if len(self.rows) < MAX_REPORTED:
                rid = ids[r].as_py() if r < len(ids) else None
                self.rows.append(f"{shard} row {offset + r} (id {rid!r}): {what}")

    @property
    def full(self) -> bool:
        return len(self.rows) >= MAX_REPORTED


def _where(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask, dtype=bool))


def validate_batch(
    batch: pa.RecordBatch,
    shard: str,
    offset: int,
    dims: int,
    storage: str,
    problems: Problems,
) -> tuple[np.ndarray, list[Any]] | None:
    """Check one batch; return the stored float32 values (n, dims) and the batch's extent
    (min lon, min lat, max lon, max lat, first and last datetime), or None if rows are bad."""
    n = batch.num_rows
    ids = batch.column("id")
    before = problems.count
    for name in REQUIRED_COLUMNS:
        col = batch.column(name)
        if col.null_count:
            problems.add(
                shard, offset, ids, _where(col.is_null().to_numpy(False)), f"{name} is null"
            )
    if problems.count > before:
        return None
    lengths = pc.utf8_length(ids).to_numpy()
    problems.add(
        shard,
        offset,
        ids,
        _where((lengths < 1) | (lengths > 1024)),
        "id must have 1..1024 characters",
    )
    # geometry: parseable WKB, valid, 2-D, not empty, inside the WGS84 range
    wkb = batch.column("geometry").to_numpy(zero_copy_only=False)
    geoms = shapely.from_wkb(wkb, on_invalid="ignore")
    missing = shapely.is_missing(geoms)
    problems.add(shard, offset, ids, _where(missing), "geometry is not valid WKB")
    ok = ~missing
    # The rule of catalog.geometry, shared with the API's writes, vectorised.
    bad = ok & (shapely.is_empty(geoms) | ~shapely.is_valid(geoms))
    problems.add(shard, offset, ids, _where(bad), INVALID)
    many = ok & (shapely.get_num_coordinates(geoms) > MAX_VERTICES)
    problems.add(
        shard, offset, ids, _where(many), f"geometry has more than {MAX_VERTICES} vertices"
    )
    bad3d = ok & shapely.has_z(geoms)
    problems.add(shard, offset, ids, _where(bad3d), "geometry has Z coordinates (2-D expected)")
    bounds = shapely.bounds(geoms)
    with np.errstate(invalid="ignore"):
        out_of_range = ok & ~(
            (bounds[:, 0] >= LON_RANGE[0])
            & (bounds[:, 2] <= LON_RANGE[1])
            & (bounds[:, 1] >= LAT_RANGE[0])
            & (bounds[:, 3] <= LAT_RANGE[1])
        )
    problems.add(shard, offset, ids, _where(out_of_range), OUT_OF_RANGE)
    # datetime
    us = datetime_us(batch.column("datetime"))
    problems.add(
        shard, offset, ids, _where((us < _MIN_US) | (us >= _MAX_US)),
        "datetime is outside 1900..2100",
    )  # fmt: skip
    # windows, nodata
    for name in ("window_width", "window_height"):
        v = batch.column(name).to_numpy()
        problems.add(shard, offset, ids, _where(v <= 0), f"{name} must be positive")
    for name in ("window_col", "window_row"):
        v = batch.column(name).to_numpy()
        problems.add(shard, offset, ids, _where(v < 0), f"{name} must not be negative")
    nd = batch.column("nodata_fraction").to_numpy().astype(np.float64)
    with np.errstate(invalid="ignore"):
        problems.add(
            shard, offset, ids, _where(~((nd >= 0) & (nd <= 1))), "nodata_fraction must be in 0..1"
        )
    # vectors: finite as stored (float32 beyond +-65504 overflows halfvec)
    emb = batch.column("embedding")
    values = emb.flatten().to_numpy(zero_copy_only=False).reshape(n, dims)
    with np.errstate(over="ignore", invalid="ignore"):
        stored = (
            values.astype(np.float16).astype(np.float32)
            if storage == "halfvec"
            else values.astype(np.float32)
        )
        finite = np.isfinite(stored).all(axis=1)
    if not finite.all():
        what = "embedding has NaN or infinite values" + (
            " (or values beyond the float16 range of halfvec storage)"
            if storage == "halfvec"
            else ""
        )
        problems.add(shard, offset, ids, _where(~finite), what)
    for rows, what in imagery.thumbnail_problems(batch):
        problems.add(shard, offset, ids, rows, what)
    if problems.count > before:
        return None
    extent = [
        float(bounds[:, 0].min()), float(bounds[:, 1].min()),
        float(bounds[:, 2].max()), float(bounds[:, 3].max()),
        _EPOCH + timedelta(microseconds=int(us.min())),
        _EPOCH + timedelta(microseconds=int(us.max())),
    ]  # fmt: skip
    return stored, extent


def union(a: list[Any] | None, b: list[Any]) -> list[Any]:
    """The extent covering extents ``a`` (or nothing) and ``b``."""
    if a is None:
        return list(b)
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]),
            min(a[4], b[4]), max(a[5], b[5])]  # fmt: skip


def datetime_us(col: pa.Array) -> np.ndarray:
    t = col.type
    assert isinstance(t, pa.TimestampType)
    if t.unit != "us":
        col = pc.cast(col, pa.timestamp("us", tz=t.tz), safe=False)
    return col.cast(pa.int64()).to_numpy()
