"""Publish input: the manifest of an encode run and its shards, checked before any read.

``prepare`` makes the ``PublishContext`` of a publish before the database is opened: it
reads and checks the manifest (``load_manifest``), checks every shard's presence, size,
sha256, Parquet schema and row count against it (``verify_shards``) and the scene
quicklooks; ``iter_batches`` streams a shard's record batches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from embcat.catalog import imagery
from embcat.catalog.collections import validate_collection_id
from embcat.catalog.errors import InvalidInput
from embcat.catalog.stacgen import default_collection_id
from embcat.catalog.store.spaces import IndexSettings
from embcat.encoders.manifest import (
    MANIFEST_NAME,
    THUMBNAIL_COLUMN,
    Manifest,
    options_sha256,
    sha256_file,
)

Mode = Literal["insert", "upsert", "ignore"]
MODES: tuple[str, ...] = ("insert", "upsert", "ignore")
MAX_REPORTED = 10  # offending rows (or shards) named in an error

REQUIRED_COLUMNS: dict[str, str] = {
    "id": "string",
    "geometry": "binary",
    "datetime": "timestamp",
    "source_item": "string",
    "source_asset": "string",
    "source_href": "string",
    "source_crs": "string",
    "window_col": "integer",
    "window_row": "integer",
    "window_width": "integer",
    "window_height": "integer",
    "nodata_fraction": "floating",
    "embedding": "fixed_size_list",
}


def load_manifest(source: Path) -> tuple[Manifest, Path]:
    """The manifest of ``source`` (a run directory or its manifest.json) and the run folder."""
    source = Path(source)
    path = source / MANIFEST_NAME if source.is_dir() else source
    if not path.exists():
        raise InvalidInput(f"no manifest at {path} (is the encode run complete?)")
    try:
        manifest = Manifest.load(path)
    except ValidationError as exc:
        raise InvalidInput.from_validation(f"invalid manifest {path}", exc, most=5) from exc
    except ValueError as exc:
        raise InvalidInput(f"invalid manifest {path}: {exc}") from exc
    enc = manifest.encoder
    if enc.space_options is not None and enc.space_sha256 not in (
        None,
        options_sha256(enc.space_options),
    ):
        raise InvalidInput(
            f"invalid manifest {path}: encoder.space_sha256 is not the sha256 of"
            " encoder.space_options (was the manifest edited?)"
        )
    if sum(s.rows for s in manifest.shards) != manifest.rows:
        raise InvalidInput(
            f"invalid manifest {path}: rows ({manifest.rows}) is not the sum of the shard rows"
        )
    return manifest, path.parent


def verify_shards(manifest: Manifest, folder: Path) -> list[Path]:
    """Check every shard's presence, size, sha256, schema and row count against the manifest."""
    paths: list[Path] = []
    problems: list[str] = []
    enc = manifest.encoder
    for rec in manifest.shards:
        path = (folder / rec.path).resolve()
        if folder.resolve() not in path.parents:
            problems.append(f"{rec.path}: shard path leaves the run folder")
            continue
        if not path.is_file():
            problems.append(f"{rec.path}: missing")
            continue
        size = path.stat().st_size
        if size != rec.bytes:
            problems.append(f"{rec.path}: {size} bytes, the manifest says {rec.bytes}")
            continue
        digest = sha256_file(path)
        if digest != rec.sha256:
            problems.append(f"{rec.path}: sha256 {digest[:12]}... does not match the manifest")
            continue
        try:
            meta = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            problems.append(f"{rec.path}: not a Parquet file ({exc})")
            continue
        with meta:
            problems.extend(
                _schema_problems(rec.path, meta.schema_arrow, enc.dimensions, enc.dtype)
            )
            problems.extend(imagery.thumbnail_schema_problems(rec.path, meta.schema_arrow))
            if meta.metadata.num_rows != rec.rows:
                problems.append(
                    f"{rec.path}: {meta.metadata.num_rows} rows, the manifest says {rec.rows}"
                )
        paths.append(path)
    if problems:
        raise InvalidInput(
            "shards do not match the manifest: " + "; ".join(problems[:MAX_REPORTED])
        )
    return paths


def _schema_problems(name: str, schema: pa.Schema, dims: int, dtype: str) -> list[str]:
    out = []
    for col, kind in REQUIRED_COLUMNS.items():
        idx = schema.get_field_index(col)
        if idx < 0:
            out.append(f"{name}: column {col!r} is missing")
            continue
        t = schema.field(idx).type
        ok = {
            "string": pa.types.is_string(t) or pa.types.is_large_string(t),
            "binary": pa.types.is_binary(t) or pa.types.is_large_binary(t),
            "timestamp": pa.types.is_timestamp(t),
            "integer": pa.types.is_integer(t),
            "floating": pa.types.is_floating(t),
            "fixed_size_list": pa.types.is_fixed_size_list(t),
        }[kind]
        if not ok:
            out.append(f"{name}: column {col!r} has type {t}, expected {kind}")
        elif col == "embedding":
            assert isinstance(t, pa.FixedSizeListType)
            if t.list_size != dims:
                out.append(
                    f"{name}: embedding has {t.list_size} dimensions, the manifest says {dims}"
                )
            want = pa.float16() if dtype == "float16" else pa.float32()
            if t.value_type != want:
                out.append(
                    f"{name}: embedding values are {t.value_type}, the manifest says {dtype}"
                )
    return out


def iter_batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    with pq.ParquetFile(path) as f:
        extra = [THUMBNAIL_COLUMN] if imagery.shard_has_thumbnails(f.schema_arrow) else []
        yield from f.iter_batches(batch_size=batch_rows, columns=[*REQUIRED_COLUMNS, *extra])


@dataclass
class PublishContext:
    """One publish: its checked input and what it was asked to do (catalog.publish passes
    it to every step instead of their arguments one by one)."""

    manifest: Manifest
    shard_paths: list[Path]
    quicklooks: list[imagery.Quicklook]
    collection_id: str
    mode: Mode
    storage: str  # of a new space; an existing collection's space decides otherwise
    defer_index: bool
    progress: bool
    origin: str
    started_wall: datetime  # when the publish started (its record)
    t0: float  # time.perf_counter() then
    timings: dict[str, float]  # seconds per step (the record's details)
    index: IndexSettings | None = None  # a new space's kind and graph (default: the code's)

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.manifest.shards)


def prepare(
    source: Path,
    *,
    collection_id: str | None,
    mode: Mode,
    storage: str,
    defer_index: bool,
    progress: bool,
    origin: str,
    index: IndexSettings | None = None,
) -> PublishContext:
    """Check a publish's input before the database is opened: the collection id, the
    manifest, every shard and quicklook (InvalidInput names what is wrong)."""
    started_wall = datetime.now(UTC)
    t0 = time.perf_counter()
    if collection_id is not None:
        validate_collection_id(collection_id)  # before anything is read (the DB's rule)
    manifest, folder = load_manifest(source)
    cid = validate_collection_id(
        default_collection_id(manifest) if collection_id is None else collection_id
    )
    shard_paths = verify_shards(manifest, folder)
    quicklooks = imagery.verify_quicklooks(manifest, folder)
    return PublishContext(
        manifest=manifest, shard_paths=shard_paths, quicklooks=quicklooks,
        collection_id=cid, mode=mode, storage=storage, defer_index=defer_index,
        progress=progress, origin=origin, started_wall=started_wall, t0=t0,
        timings={"verify_s": time.perf_counter() - t0}, index=index,
    )  # fmt: skip
