"""The contract between the encode job and the publish job: shard schema and manifest.

An encode run leaves a directory with one GeoParquet shard per rank and a
``manifest.json`` written by rank 0 after all shards are complete::

    run-dir/
      manifest.json
      shard-00000-of-00002.parquet
      shard-00001-of-00002.parquet

Shard rows (one per chip, close to the Major TOM convention):

===================  ==========================================  ==============================
column               arrow type                                  meaning
===================  ==========================================  ==============================
id                   string                                      deterministic chip id
geometry             binary (WKB, EPSG:4326 / OGC:CRS84)         chip footprint
datetime             timestamp[us, tz=UTC]                       acquisition time of the source
source_item          string                                      STAC item id or file stem
source_asset         string                                      asset key or file name
source_href          string                                      where the raster was read
source_crs           string                                      e.g. "EPSG:32633"
window_col           int32                                       pixel window (col offset)
window_row           int32                                       pixel window (row offset)
window_width         int32                                       window width in pixels
window_height        int32                                       window height in pixels
nodata_fraction      float32                                     share of nodata pixels
embedding            fixed_size_list<float32 or float16>[D]      the vector
===================  ==========================================  ==============================

Optional column past these: ``thumbnail`` (binary, nullable), a PNG quicklook of the chip
(encoders.thumbnails); the publish job stores it as the item's ``thumbnail`` asset.

Optional manifest key ``quicklooks``: one record per source scene (``QuicklookRecord``:
a PNG under ``quicklooks/`` in the run folder, in Web Mercator, with its WGS84 bounds); the
publish job stores them as the collection's ``quicklook-*`` assets. Manifests without it
(older runs, other tools) keep their checksum.

The file-level ``geo`` metadata follows GeoParquet 1.1 (primary column ``geometry``,
WKB encoding, CRS OGC:CRS84). This module is dependency-light on purpose: both the
encode job (encoders/) and the publish job (catalog/) import it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
THUMBNAIL_COLUMN = "thumbnail"  # optional shard column: each chip's PNG quicklook
QUICKLOOKS_KEY = "quicklooks"  # optional manifest key: the scenes' quicklooks
QUICKLOOK_DIR = "quicklooks"  # their folder in the run directory
QUICKLOOK_KEY_PATTERN = r"^[A-Za-z0-9._-]{1,200}$"
MANIFEST_VERSION = 1
SHARD_PATTERN = "shard-{rank:05d}-of-{world:05d}.parquet"


def shard_name(rank: int, world: int) -> str:
    return SHARD_PATTERN.format(rank=rank, world=world)


def shard_schema(dimensions: int, dtype: Literal["float32", "float16"] = "float32") -> pa.Schema:
    """Arrow schema of a shard for vectors of ``dimensions`` values of ``dtype``."""
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("geometry", pa.binary(), nullable=False),
            pa.field("datetime", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("source_item", pa.string(), nullable=False),
            pa.field("source_asset", pa.string(), nullable=False),
            pa.field("source_href", pa.string(), nullable=False),
            pa.field("source_crs", pa.string(), nullable=False),
            pa.field("window_col", pa.int32(), nullable=False),
            pa.field("window_row", pa.int32(), nullable=False),
            pa.field("window_width", pa.int32(), nullable=False),
            pa.field("window_height", pa.int32(), nullable=False),
            pa.field("nodata_fraction", pa.float32(), nullable=False),
            pa.field("embedding", pa.list_(value_type, dimensions), nullable=False),
        ]
    )


def geo_metadata(bbox: list[float] | None = None) -> dict[str, Any]:
    """GeoParquet 1.1 file metadata for a shard (value of the ``geo`` key)."""
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon"]}
    if bbox is not None:
        column["bbox"] = bbox
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


class EncoderIdentity(BaseModel):
    """Which encoder made the vectors: defines the embedding space."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    dimensions: int = Field(gt=0)
    dtype: Literal["float32", "float16"] = "float32"
    metric: Literal["cosine", "l2", "inner_product"] = "cosine"
    normalized: bool = False
    bands: list[str] = Field(default_factory=list)
    chip_size: int | None = None
    gsd: float | None = None
    mlm: dict[str, Any] = Field(default_factory=dict, description="STAC MLM fields (mlm:*)")
    space_options: dict[str, Any] | None = Field(
        None,
        description="every option that changes the vectors, canonical (see space_options)",
    )
    space_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="sha256 of canonical space_options"
    )


class ShardRecord(BaseModel):
    path: str = Field(description="file name relative to the manifest")
    rank: int = Field(ge=0)
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class QuicklookRecord(BaseModel):
    """A quicklook of one source scene (PNG, Web Mercator grid, at most 512 px a side)."""

    key: str = Field(pattern=QUICKLOOK_KEY_PATTERN, description="unique in the run")
    source_item: str
    path: str = Field(description="file name relative to the manifest")
    bbox: list[float] = Field(min_length=4, max_length=4, description="WGS84 w, s, e, n")
    crs: str = "EPSG:3857"
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    bytes: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    acquired: datetime | None = Field(None, description="the scene's datetime")


def quicklook_records(manifest: Manifest) -> list[QuicklookRecord]:
    """The run's scene quicklooks (the optional manifest key; [] when absent)."""
    raw = (manifest.model_extra or {}).get(QUICKLOOKS_KEY) or []
    if not isinstance(raw, list):
        raise ValueError(f"manifest key {QUICKLOOKS_KEY!r} must be a list")
    return [QuicklookRecord.model_validate(r) for r in raw]


class RunParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    chip_size: int = Field(gt=0)
    stride: int = Field(gt=0)
    bands: list[str] = Field(default_factory=list)
    grid_id: str = Field(description="identifies the chip grid (chip size, stride, source CRS)")
    world_size: int = Field(1, ge=1)
    batch_size: int | None = None
    device: str | None = None
    nodata_threshold: float | None = None
    inputs: list[str] = Field(default_factory=list)
    encoder_options: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    """What ``manifest.json`` holds. Rank 0 writes it once every shard is complete."""

    model_config = ConfigDict(extra="allow")

    embcat_manifest_version: int = MANIFEST_VERSION
    created: datetime
    encoder: EncoderIdentity
    run: RunParameters
    software: dict[str, str] = Field(default_factory=dict)
    shards: list[ShardRecord]
    rows: int = Field(ge=0, description="sum of shard rows")
    skipped_nodata: int = Field(0, ge=0)
    source_bytes: int = Field(0, ge=0, description="bytes of source imagery the chips cover")

    def dump(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True))
        tmp.replace(path)  # atomic: a manifest is either absent or complete
        return path

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if path.is_dir():
            path = path / MANIFEST_NAME
        return cls.model_validate_json(path.read_bytes())

    def checksum(self) -> str:
        """sha256 of the canonical JSON (the publish record keeps it)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(canonical).hexdigest()


# -- the embedding space's identity ---------------------------------------------------------
#
# Two runs may be merged into one collection only if their vectors are comparable: same
# encoder, version, dimensions and metric, and every option that changes the vectors the
# same (seed, bands and their order, patch size, bias, scaling, the chip size of the run,
# the checkpoint file's sha256, ...). ``space_options`` is that set in canonical form;
# ``options_sha256`` its hash, recorded in the manifest, on the space and in the
# collection's metadata.

# Encoder options that never change a vector's values: the exchange precision (vectors are
# stored as half or single precision anyway) and the source pixel size an encoder declares
# (checked against the sources, never applied). An encoder can drop more of its own
# (``Encoder.space_options``: the checkpoint encoder drops its file name).
NON_IDENTITY_OPTIONS = frozenset({"dtype", "gsd"})
# Options that the canonical form holds at its top level with the run's effective value.
_EFFECTIVE_OPTIONS = frozenset({"bands", "chip_size", "scaling"})


def canonical_json(value: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, no NaN (hashes compare)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def options_sha256(options: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(options)).hexdigest()


def make_space_options(
    *,
    name: str,
    version: str,
    dimensions: int,
    metric: str,
    normalized: bool,
    bands: list[str],
    chip_size: int | None,
    scaling: dict[str, Any] | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The canonical space options (``options``: the encoder's own hyperparameters)."""
    own = {
        k: v
        for k, v in options.items()
        if k not in NON_IDENTITY_OPTIONS and k not in _EFFECTIVE_OPTIONS
    }
    # through JSON once: tuples become lists, ints stay ints, so equal options hash equal
    return json.loads(
        canonical_json(
            {
                "encoder": name,
                "version": version,
                "dimensions": dimensions,
                "metric": metric,
                "normalized": normalized,
                "bands": list(bands),
                "chip_size": chip_size,
                "scaling": scaling,
                "options": own,
            }
        )
    )


def space_options(manifest: Manifest) -> dict[str, Any]:
    """The run's canonical space options: as recorded by the encode job, or (a manifest of
    an older embcat or another tool) derived from what the manifest holds."""
    enc, run = manifest.encoder, manifest.run
    if enc.space_options is not None:
        return enc.space_options
    recorded = dict(getattr(enc, "options", None) or run.encoder_options or {})
    scaling = recorded.get("scaling")
    return make_space_options(
        name=enc.name,
        version=enc.version,
        dimensions=enc.dimensions,
        metric=enc.metric,
        normalized=enc.normalized,
        bands=list(enc.bands or run.bands),
        chip_size=run.chip_size,
        scaling=scaling if isinstance(scaling, dict) else None,
        options=recorded,
    )


def space_differences(
    ours: dict[str, Any], theirs: dict[str, Any], *, known_only: bool = False
) -> list[str]:
    """``key: a vs b`` for each option that differs (``options.seed: 0 vs 1``);
    ``known_only``: only options that both sides recorded (not None)."""

    def flat(d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k != "options"}
        out.update({f"options.{k}": v for k, v in (d.get("options") or {}).items()})
        return out

    a, b = flat(ours), flat(theirs)
    missing = "(not recorded)"
    return [
        f"{k}: {json.dumps(a.get(k, missing))} vs {json.dumps(b.get(k, missing))}"
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
        and not (
            known_only
            and (a.get(k, missing) in (None, missing) or b.get(k, missing) in (None, missing))
        )
    ]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
