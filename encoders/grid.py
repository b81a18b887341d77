"""The chip grid: which windows of a source become chips, their ids and footprints.

Grid (documented in docs/hpc.md): in each source's native CRS and pixel grid, chips are
square windows of ``chip_size`` pixels whose upper-left corners lie at
``(col, row) = (i * stride, j * stride)`` for ``i, j >= 0``; only whole windows inside
the raster are used (a partial window at the right or bottom edge is not a chip). Chips
are ordered source by source (input order), then row-major. The chip id is derived from
the source and window only::

    {source item id}_{col}_{row}_{chip_size}

so a rerun, another rank or another machine gives the same ids. Footprints are the
window's polygon in the source CRS, densified (4 points per edge) and reprojected to
EPSG:4326 (longitude, latitude).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embcat.encoders.sources import Source

EDGE_POINTS = 4


@dataclass(frozen=True)
class Chip:
    source: int  # index into the source list
    col: int
    row: int
    size: int
    id: str


def chip_id(item_id: str, col: int, row: int, size: int) -> str:
    return f"{item_id}_{col}_{row}_{size}"


def grid_id(chip_size: int, stride: int, sources: Sequence[Source]) -> str:
    crss = sorted({s.crs for s in sources if len(s.crs) < 64}) or ["custom"]
    return f"native:{chip_size}:{stride}:{'+'.join(crss)}"


def plan_chips(sources: Sequence[Source], chip_size: int, stride: int) -> list[Chip]:
    """Every chip of every source, in grid order."""
    chips: list[Chip] = []
    for index, src in enumerate(sources):
        for row in range(0, src.height - chip_size + 1, stride):
            for col in range(0, src.width - chip_size + 1, stride):
                cid = chip_id(src.item_id, col, row, chip_size)
                chips.append(Chip(index, col, row, chip_size, cid))
    return chips


def split_for_rank(chips: Sequence[Chip], rank: int, world: int) -> list[Chip]:
    """Rank ``rank``'s contiguous share of ``chips`` (sizes differ by at most one)."""
    n = len(chips)
    return list(chips[rank * n // world : (rank + 1) * n // world])


def footprints(source: Source, chips: Sequence[Chip]) -> tuple[list[bytes], np.ndarray]:
    """WKB polygons in EPSG:4326 of ``chips`` (all of ``source``) and their (N, 4) bboxes."""
    import shapely
    from pyproj import CRS, Transformer

    if not chips:
        return [], np.zeros((0, 4))
    a, b, c, d, e, f = source.transform
    t = np.linspace(0.0, 1.0, EDGE_POINTS, endpoint=False)
    # Unit-square outline, counter-clockwise in pixel space: top, right, bottom, left.
    u = np.concatenate([t, np.ones_like(t), 1 - t, np.zeros_like(t)])
    v = np.concatenate([np.zeros_like(t), t, np.ones_like(t), 1 - t])
    cols = np.array([ch.col for ch in chips], dtype=np.float64)[:, None]
    rows = np.array([ch.row for ch in chips], dtype=np.float64)[:, None]
    size = np.array([ch.size for ch in chips], dtype=np.float64)[:, None]
    px, py = cols + u[None] * size, rows + v[None] * size
    x, y = c + a * px + b * py, f + d * px + e * py
    transformer = Transformer.from_crs(CRS.from_wkt(source.crs_wkt), "EPSG:4326", always_xy=True)
    lon, lat = transformer.transform(x, y)
    coords = np.stack([lon, lat], axis=-1)  # (N, P, 2)
    polygons = shapely.polygons(coords)
    if hasattr(shapely, "orient_polygons"):  # shapely >= 2.1: exterior counter-clockwise
        polygons = shapely.orient_polygons(polygons)
    bboxes = np.stack([lon.min(1), lat.min(1), lon.max(1), lat.max(1)], axis=1)
    return list(shapely.to_wkb(polygons)), bboxes
