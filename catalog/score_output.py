"""The outputs of a score: GeoJSON and GeoParquet streamed, a PNG heat map; each carries
the model record (``ScoreModel.as_json``) under ``META_KEY``."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg

from embcat.catalog.errors import InvalidInput, translated
from embcat.catalog.score_model import META_KEY, ScoreModel, ScoreRequest
from embcat.catalog.store import embedding_reads
from embcat.encoders.thumbnails import png_bytes


def geojson_chunks(
    model: ScoreModel, batches: Iterator[list[tuple[str, bytes, float]]]
) -> Iterator[bytes]:
    """A GeoJSON FeatureCollection, streamed; the model is its ``embcat:score`` member."""
    from shapely import from_wkb, to_geojson

    head = {"type": "FeatureCollection", META_KEY: model.as_json()}
    yield json.dumps(head)[:-1].encode() + b', "features": ['
    first = True
    for batch in batches:
        geoms = to_geojson(from_wkb([g for _, g, _ in batch]))
        parts = []
        for (iid, _, s), g in zip(batch, geoms, strict=True):
            feature = (
                '{"type": "Feature", "id": ' + json.dumps(iid) + ', "geometry": ' + g
                + ', "properties": {"collection": ' + json.dumps(model.collection_id)
                + ', "score": ' + repr(s) + "}}"
            )  # fmt: skip
            parts.append(feature)
        if parts:
            yield (("" if first else ",") + ",".join(parts)).encode()
            first = False
    yield b"]}"


def parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("collection", pa.string(), nullable=False),
            pa.field("score", pa.float64(), nullable=False),
            pa.field("geometry", pa.binary(), nullable=False),
        ]
    )


def parquet_chunks(
    model: ScoreModel, batches: Iterator[list[tuple[str, bytes, float]]]
) -> Iterator[bytes]:
    """GeoParquet 1.0 (WKB geometry, EPSG:4326), one row group per batch, streamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embcat.catalog.export import _Sink

    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": []}},
    }
    schema = parquet_schema().with_metadata(
        {b"geo": json.dumps(geo).encode(), META_KEY.encode(): json.dumps(model.as_json()).encode()}
    )
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    for batch in batches:
        table = pa.Table.from_arrays(
            [
                pa.array([r[0] for r in batch], pa.string()),
                pa.array([model.collection_id] * len(batch), pa.string()),
                pa.array([r[2] for r in batch], pa.float64()),
                pa.array([r[1] for r in batch], pa.binary()),
            ],
            schema=schema,
        )
        writer.write_table(table)
        yield sink.take()
    writer.close()
    yield sink.take()


def collection_bbox(
    conn: psycopg.Connection, model: ScoreModel
) -> tuple[float, float, float, float] | None:
    """The extent of the collection's chips (the PNG's area when the request has no bbox)."""
    with translated():
        return embedding_reads.extent(conn, model.collection_id, model.space.id)


def png_area(
    conn: psycopg.Connection, model: ScoreModel, req: ScoreRequest
) -> tuple[float, float, float, float]:
    if req.bbox is not None:
        b = req.bbox
        return (b[0], b[1], b[2], b[3]) if len(b) == 4 else (b[0], b[1], b[3], b[4])
    if req.intersects is not None:
        from shapely.geometry import shape

        x0, y0, x1, y1 = shape(req.intersects).bounds
        return float(x0), float(y0), float(x1), float(y1)
    found = collection_bbox(conn, model)
    if found is None:
        raise InvalidInput(f"collection {model.collection_id!r} has no chips to map")
    return found


# A perceptual ramp (dark blue -> teal -> yellow), eight stops: score 0..1 after the cut.
_RAMP = np.array(
    [
        [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142],
        [38, 130, 142], [31, 158, 137], [109, 205, 89], [253, 231, 37],
    ],
    dtype=np.float64,
)  # fmt: skip


def colour(values: np.ndarray) -> np.ndarray:
    """RGB (uint8) of values in [0, 1] along the ramp."""
    t = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    f = (t - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - f) + _RAMP[hi] * f).astype(np.uint8)


def render_png(
    model: ScoreModel,
    batches: Iterator[list[tuple[str, bytes, float]]],
    bbox: tuple[float, float, float, float],
    width: int | None = None,
    height: int | None = None,
) -> bytes:
    """A heat map of the scores over ``bbox``: RGBA PNG, transparent where no chip passed.

    Colour runs from the cut (threshold, or the lowest score kept) at dark blue to score 1
    and above at yellow; where chips overlap a pixel the highest score shows. The model is
    in a ``tEXt`` chunk under the key ``embcat:score``. Memory: the raster (at most
    2048 x 2048) and one batch.
    """
    from affine import Affine
    from rasterio import features as rio_features
    from shapely import from_wkb

    from embcat.catalog.preview import png_size

    w, h = png_size(bbox, width, height)
    west, south, east, north = bbox
    if not (east > west and north > south):
        raise InvalidInput("the area to map is empty (bbox with no width or height)")
    transform = Affine((east - west) / w, 0.0, west, 0.0, -(north - south) / h, north)
    best = np.full((h, w), -np.inf, dtype=np.float64)
    for batch in batches:
        shapes = list(
            zip(from_wkb([g for _, g, _ in batch]), [s for _, _, s in batch], strict=True)
        )
        # Burn in order of score so that the highest wins where footprints share a pixel.
        shapes.sort(key=lambda t: t[1])
        layer = rio_features.rasterize(
            shapes,
            out_shape=(h, w),
            transform=transform,
            fill=np.nan,
            dtype="float64",
            all_touched=True,
        )
        np.fmax(best, layer, out=best)
    covered = np.isfinite(best)
    low = (
        model.threshold
        if model.threshold is not None
        else (float(best[covered].min()) if covered.any() else 0.0)
    )
    span = max(1.0 - low, 1e-9)
    rgb = colour((np.where(covered, best, low) - low) / span)
    image = np.zeros((h, w, 4), dtype=np.uint8)
    image[..., :3] = np.where(covered[..., None], rgb, 0)
    image[..., 3] = np.where(covered, 255, 0)
    return png_bytes(image, {META_KEY: json.dumps(model.as_json())})


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG (to read the model back from a heat map)."""
    out: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return out
