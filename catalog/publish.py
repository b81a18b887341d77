"""The publish job: an encode run's shards + manifest into STAC items with vector assets.

One call is one transaction, so a failed or killed publish leaves the catalogue exactly as
it was::

    checksums of every shard (before touching the database)
    BEGIN
      pg_advisory_xact_lock('embcat-publish:<collection>')    same collection: serialised
      a reader thread streams shards by record batch -> validates -> encodes binary COPY rows
      per chunk (CHUNK_BYTES of vectors):
        binary COPY into a TEMP staging table
        duplicate ids (a TEMP table of the run's ids, not Python memory)
        first chunk: register the space, create the collection,
                     merge locks (global, then the space's; shared or exclusive)  see below
        INSERT .. SELECT into items, then embeddings (insert | upsert | ignore); chip
          thumbnails into item_thumbnails (catalog.imagery); TRUNCATE staging
      update the collection (extent of every chunk, pystac; scene quicklooks)
      build the space's HNSW index if absent (unless defer_index), ANALYZE
      publish record
    COMMIT

While the database merges one chunk, the reader prepares the next, so Python and the
server work at the same time. A bad row anywhere (even in the last chunk) rolls back the
chunks already merged: nothing is written.

Memory is bounded by the record batch, never by the input size. The reader thread builds
each item's JSON documents column-wise (Arrow string kernels) from a constant template
(catalog.stacgen) plus the row's columns; the merge inserts them as they are.

The merge locks: ``embeddings`` is partitioned by space (migration 0021). A publish that
builds a space's index holds a SHARE lock on that space's partition until commit, which
would deadlock against another publish's ANALYZE or insert into the same space; so index
builders take the space's merge lock (``spaces.merge_lock``) exclusively and every
other publish of that space takes it shared. Attaching a new space's partition locks
``items`` and ``embedding_spaces`` against writes until commit: that publish takes the
global merge lock exclusively (before registering the space), every other publish takes
it shared. So an index build of one space never waits for, nor blocks, a publish of
another. Reading, validating and staging of different collections always run in
parallel.
The collection's row is locked ``FOR NO KEY UPDATE``: item writes into the collection
(whose foreign-key checks take ``FOR KEY SHARE``) do not wait for the publish.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from embcat.catalog import imagery, metrics
from embcat.catalog import spaces as spaces_mod
from embcat.catalog.collections import validate_collection_id
from embcat.catalog.db import connect
from embcat.catalog.errors import Conflict, EmbcatError, InvalidInput, translated
from embcat.catalog.geometry import INVALID, LAT_RANGE, LON_RANGE, MAX_VERTICES, OUT_OF_RANGE
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.spaces import Space
from embcat.catalog.stac import source_uri
from embcat.catalog.stacgen import (
    SOURCE_MEDIA_TYPE,
    ItemTemplate,
    build_collection,
    default_collection_id,
    item_template,
    npy_header,
)
from embcat.encoders.manifest import (
    MANIFEST_NAME,
    THUMBNAIL_COLUMN,
    Manifest,
    make_space_options,
    options_sha256,
    sha256_file,
    space_differences,
    space_options,
)

log = logging.getLogger(__name__)

Mode = Literal["insert", "upsert", "ignore"]
MODES: tuple[str, ...] = ("insert", "upsert", "ignore")
MAX_REPORTED = 10  # offending rows named in an error
BATCH_BYTES = 16 << 20  # vector bytes per record batch (memory is bounded by it)
CHUNK_BYTES = 64 << 20  # vector bytes staged and merged at a time
QUEUED_BATCHES = 8  # encoded batches the reader thread may run ahead
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970
_MIN_US = -2_208_988_800_000_000  # 1900-01-01
_MAX_US = 4_102_444_800_000_000  # 2100-01-01
_URL_SAFE = r"^[A-Za-z0-9._~-]+$"
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
_STAGE_FIELDS = 8
# The staging table's rows (a vector plus three item documents, 3-5 kB) stay inline and
# uncompressed: TOAST would compress or move them out of line on the way in, only to
# decompress them again for the merge.
_TOAST_TARGET_MAX = 8160
ANALYZE_ITEM_COLUMNS = (
    "collection_id, id, geometry, bbox, datetime, start_datetime, end_datetime, change_seq"
)

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


@dataclass
class PublishResult:
    collection_id: str
    mode: str
    rows: int
    inserted: int
    updated: int
    skipped: int
    bytes: int
    elapsed_s: float
    manifest_sha256: str
    space_id: int
    created_collection: bool
    index_built: bool
    index_s: float
    publish_id: int
    index_kind: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        mb = self.bytes / 1e6
        return (
            f"published {self.rows:,} rows to {self.collection_id} ({self.mode}):"
            f" {self.inserted:,} inserted, {self.updated:,} updated, {self.skipped:,} skipped"
            f" in {self.elapsed_s:.1f} s ({self.rate:,.0f} rows/s,"
            f" {mb / self.elapsed_s if self.elapsed_s > 0 else 0:.1f} MB/s)"
            + (
                f"; searchable: load {self.elapsed_s - self.index_s:.1f} s"
                f" + {self.index_kind} index {self.index_s:.1f} s"
                if self.index_built
                else ""
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- input: manifest and shards ---------------------------------------------------------------


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


# -- per-batch validation and encoding --------------------------------------------------------


@dataclass
class _Problems:
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


def _validate_batch(
    batch: pa.RecordBatch,
    shard: str,
    offset: int,
    dims: int,
    storage: str,
    problems: _Problems,
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
    us = _datetime_us(batch.column("datetime"))
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


def _union(a: list[Any] | None, b: list[Any]) -> list[Any]:
    """The extent covering extents ``a`` (or nothing) and ``b``."""
    if a is None:
        return list(b)
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]),
            min(a[4], b[4]), max(a[5], b[5])]  # fmt: skip


def _datetime_us(col: pa.Array) -> np.ndarray:
    t = col.type
    assert isinstance(t, pa.TimestampType)
    if t.unit != "us":
        col = pc.cast(col, pa.timestamp("us", tz=t.tz), safe=False)
    return col.cast(pa.int64()).to_numpy()


def _tail_dtype(dims: int, storage: str) -> np.dtype:
    value = ">f2" if storage == "halfvec" else ">f4"
    return np.dtype(
        [
            ("l_dt", ">i4"), ("dt", ">i8"),
            ("l_e", ">i4"), ("e_dim", ">u2"), ("e_unused", ">u2"), ("e", value, (dims,)),
        ]
    )  # fmt: skip


_BIN = pa.binary()
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_JSONB_V1 = pa.scalar(b"\x01", _BIN)  # binary jsonb: format version 1, then the text


def _const(value: bytes) -> pa.Scalar:
    return pa.scalar(value, _BIN)


def _fixed(data: bytes, width: int, n: int) -> pa.Array:
    """``n`` values of ``width`` bytes each (taken from ``data``) as a binary array."""
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(data)])
    return arr.cast(_BIN)


def _field_lengths(values: pa.Array, extra: int = 0) -> pa.Array:
    """The 4-byte big-endian COPY field header (byte length + ``extra``) of each value."""
    lengths = pc.binary_length(values).to_numpy(zero_copy_only=False) + extra
    return _fixed(lengths.astype(">i4").tobytes(), 4, len(values))


def _json_strings(col: pa.Array) -> pa.Array:
    """Each value as a JSON string (escaped once per distinct value, with orjson)."""
    enc = pc.dictionary_encode(col)
    words = pa.array([orjson.dumps(v) for v in enc.dictionary.to_pylist()], _BIN)
    return pc.take(words, enc.indices)


def _json_ints(col: pa.Array) -> pa.Array:
    return pc.cast(col, pa.string()).cast(_BIN)


def _nodata_numbers(col: pa.Array) -> pa.Array:
    """``round(x::numeric, 6)`` of each float4 value as PostgreSQL writes it (``0.250000``):
    PostgreSQL's shortest float4 text, rounded half away from zero. Once per distinct value
    (a shard has few)."""
    enc = pc.dictionary_encode(col)
    q = Decimal("0.000001")
    words = [
        str(
            Decimal(np.format_float_positional(np.float32(v), unique=True)).quantize(
                q, ROUND_HALF_UP
            )
        ).encode()
        for v in enc.dictionary.to_pylist()
    ]
    return pc.take(pa.array(words, _BIN), enc.indices)


def _timestamps(us: np.ndarray) -> pa.Array:
    """RFC 3339 UTC texts as the catalogue writes them: microseconds only when non-zero.
    Formatted once per distinct value (the chips of a scene share theirs)."""
    enc = pc.dictionary_encode(pa.array(us, pa.timestamp("us")))
    text = pc.strftime(enc.dictionary, format="%Y-%m-%dT%H:%M:%S")
    text = pc.replace_substring_regex(text, r"\.000000$", "").cast(_BIN)
    return pc.take(text, enc.indices)


class _Encoder:
    """Encodes validated record batches as PostgreSQL binary COPY rows of the staging table.

    Each row's item documents (properties, assets, links) are built here, column-wise with
    Arrow's string kernels from the publish's constant template plus the row's columns, so
    the merge only inserts them. This runs in the reader thread while the database merges
    the previous chunk; building them in SQL (jsonb_build_object per row) made the items
    merge the slowest step of a publish. No Python loop over rows other than the checksum.
    """

    def __init__(self, dims: int, storage: str, template: ItemTemplate) -> None:
        self.dims = dims
        self.storage = storage
        self.dtype = _tail_dtype(dims, storage)
        self.header = npy_header(dims)
        self.base_hash = hashlib.sha256(self.header)
        self.vbytes = 2 if storage == "halfvec" else 4
        self._fields = _const(struct.pack(">h", _STAGE_FIELDS))
        inner = orjson.dumps(template.properties)[1:-1]
        self._props_open = _const(b"{" + inner + b"," if inner else b"{")
        asset = orjson.dumps(template.asset)[1:-1]
        self._asset_open = _const(b'{"embeddings":{' + asset + (b"," if asset else b""))
        self._href_prefix = _const(b'"href":' + orjson.dumps(template.href_prefix)[:-1])
        self._href_suffix = _const(orjson.dumps(template.href_suffix)[1:])
        self._src_type = _const(b',"type":' + orjson.dumps(SOURCE_MEDIA_TYPE) + b',"title":')
        self._thumbs = imagery.ThumbnailEncoder(template.href_prefix)

    def _digests(self, stored: np.ndarray) -> np.ndarray:
        """sha256 of each vector's canonical .npy bytes (header + little-endian float32)."""
        le = np.ascontiguousarray(stored, dtype="<f4")
        mv = le.data.cast("B")
        row = 4 * self.dims
        base = self.base_hash
        digests = bytearray()
        for i in range(len(stored)):
            h = base.copy()
            h.update(mv[i * row : (i + 1) * row])
            digests += h.digest()
        return np.frombuffer(bytes(digests), dtype=np.uint8).reshape(-1, 32)

    def _documents(
        self, batch: pa.RecordBatch, us: np.ndarray, digests: np.ndarray
    ) -> list[pa.Array]:
        """The properties, assets and links fields (COPY headers included) of each row."""
        n = batch.num_rows
        col = batch.column
        join = pc.binary_join_element_wise
        item = _json_strings(col("source_item"))
        c, r = _json_ints(col("window_col")), _json_ints(col("window_row"))
        w, h = _json_ints(col("window_width")), _json_ints(col("window_height"))
        props = join(
            self._props_open, _const(b'"datetime":"'), _timestamps(us),
            _const(b'Z","proj:code":'), _json_strings(col("source_crs")),
            _const(b',"proj:shape":['), h, _const(b","), w,
            _const(b'],"embcat:source_item":'), item,
            _const(b',"embcat:source_asset":'), _json_strings(col("source_asset")),
            _const(b',"embcat:window":['), c, _const(b","), r, _const(b","), w, _const(b","), h,
            _const(b'],"embcat:nodata_fraction":'), _nodata_numbers(col("nodata_fraction")),
            _const(b"}"), b"",
        )  # fmt: skip
        ids = col("id")
        safe = pc.match_substring_regex(ids, _URL_SAFE)
        if pc.all(safe).as_py():
            href_ids = ids.cast(_BIN)
        else:  # ids outside the URL-safe set are percent-encoded in the href (rare)
            href_ids = pa.array(
                [
                    v if ok else quote(v, safe="")
                    for v, ok in zip(ids.to_pylist(), safe.to_pylist(), strict=True)
                ],
                pa.string(),
            ).cast(_BIN)
        hexed = np.empty((n, 64), dtype=np.uint8)
        hexed[:, 0::2] = _HEX[digests >> 4]
        hexed[:, 1::2] = _HEX[digests & 15]
        assets = join(
            self._asset_open, self._href_prefix, href_ids, self._href_suffix,
            _const(b',"file:checksum":"1220'), _fixed(hexed.tobytes(), 64, n), _const(b'"}'),
            self._thumbs.asset_json(batch, href_ids), _const(b"}"), b"",
        )  # fmt: skip
        links = join(
            _const(b'[{"rel":"derived_from","href":'),
            _json_strings(_source_uris(col("source_href"))),
            self._src_type, item, _const(b"}]"), b"",
        )  # fmt: skip
        out: list[pa.Array] = []
        for doc in (props, assets, links):
            out += [_field_lengths(doc, extra=1), _JSONB_V1, doc]
        return out

    def encode(self, batch: pa.RecordBatch, stored: np.ndarray) -> memoryview:
        """The batch's rows in COPY BINARY form (one contiguous buffer)."""
        n = batch.num_rows
        us = _datetime_us(batch.column("datetime"))
        tail = np.empty(n, dtype=self.dtype)
        tail["l_dt"] = 8
        tail["dt"] = us - _PG_EPOCH_US
        tail["l_e"] = 4 + self.vbytes * self.dims
        tail["e_dim"] = self.dims
        tail["e_unused"] = 0
        tail["e"] = stored  # cast to big-endian float16/float32
        ids = batch.column("id").cast(_BIN)
        wkbs = batch.column("geometry").cast(_BIN)
        rows = pc.binary_join_element_wise(
            self._fields,
            _field_lengths(ids), ids,
            _field_lengths(wkbs), wkbs,
            *self._documents(batch, us, self._digests(stored)),
            _fixed(tail.tobytes(), self.dtype.itemsize, n),
            *self._thumbs.copy_field(batch),
            b"",
        )  # fmt: skip
        offsets = np.frombuffer(
            rows.buffers()[1], dtype=np.int32, count=len(rows) + 1, offset=4 * rows.offset
        )
        return memoryview(rows.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def _source_uris(col: pa.Array) -> pa.Array:
    """Source hrefs as absolute URIs (a path of the encoding site becomes ``file://``);
    converted once per distinct href (a batch holds the chips of few scenes)."""
    coded = pc.dictionary_encode(col)
    uris = [source_uri(h) or h for h in coded.dictionary.to_pylist()]
    return pc.take(pa.array(uris, pa.string()), coded.indices)


def _iter_batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    with pq.ParquetFile(path) as f:
        extra = [THUMBNAIL_COLUMN] if imagery.shard_has_thumbnails(f.schema_arrow) else []
        yield from f.iter_batches(batch_size=batch_rows, columns=[*REQUIRED_COLUMNS, *extra])


# -- the database side -------------------------------------------------------------------------


def _stage_sql(space: Space) -> str:
    return f"""
CREATE TEMP TABLE publish_staging (
    id text, wkb bytea, properties jsonb, assets jsonb, links jsonb, datetime timestamptz,
    embedding {space.storage}, thumbnail bytea
) WITH (toast_tuple_target = {_TOAST_TARGET_MAX}) ON COMMIT DROP;
ALTER TABLE publish_staging ALTER COLUMN thumbnail SET STORAGE EXTERNAL"""


def _existing_collection(
    conn: psycopg.Connection, collection_id: str
) -> tuple[dict[str, Any], Space | None] | None:
    row = conn.execute(
        "select stac, space_id from collections where id = %s for no key update",
        (collection_id,),
    ).fetchone()
    if row is None:
        return None
    space = spaces_mod.get_space(conn, row[1]) if row[1] is not None else None
    return row[0], space


def _check_space(
    collection_id: str, space: Space, manifest: Manifest, existing_stac: dict[str, Any] | None
) -> None:
    """Refuse (Conflict) a run whose vectors are not of the collection's space."""
    why = space_conflict(collection_id, space, manifest, existing_stac)
    if why is not None:
        raise Conflict(why)


def check_target(conn: psycopg.Connection, manifest: Manifest, collection_id: str) -> None:
    """Refuse, before any shard is read or sent, a target the publish would refuse: an
    invalid collection id (InvalidInput), a collection of another embedding space
    (Conflict). The remote upload runs this when the manifest arrives."""
    from embcat.catalog.stac import COLLECTION_ID

    if not COLLECTION_ID.match(collection_id):
        raise InvalidInput(
            f"invalid collection id {collection_id!r}: use 1..255 letters, digits, '.', '_'"
            " or '-', starting with a letter or digit"
        )
    with translated():
        row = conn.execute(
            "select stac, space_id from collections where id = %s", (collection_id,)
        ).fetchone()
        if row is None or row[1] is None:
            return  # a new collection, or one without vectors yet: any space may start it
        _check_space(collection_id, spaces_mod.get_space(conn, row[1]), manifest, row[0])


def _legacy_options(space: Space, stac: dict[str, Any] | None) -> dict[str, Any]:
    """What a space registered before migration 0009 recorded of its options: the MLM
    hyperparameters of its encoder and the collection's chip size (None: not recorded)."""
    hyper = space.mlm.get("mlm:hyperparameters")
    hyper = dict(hyper) if isinstance(hyper, dict) else {}
    layout = (stac or {}).get("emb:chip_layout") or {}
    chip = layout.get("chip_size") if isinstance(layout, dict) else None
    if isinstance(chip, list) and chip:
        chip = chip[0]
    bands = hyper.get("bands")
    scaling = hyper.get("scaling")
    return make_space_options(
        name=space.encoder_name,
        version=space.encoder_version,
        dimensions=space.dimensions,
        metric=space.metric,
        normalized=space.normalized,
        bands=list(bands) if isinstance(bands, list) else [],
        chip_size=chip if isinstance(chip, int) else None,
        scaling=scaling if isinstance(scaling, dict) else None,
        options=hyper,
    ) | ({} if isinstance(bands, list) else {"bands": None})


def space_conflict(
    collection_id: str, space: Space, manifest: Manifest, existing_stac: dict[str, Any] | None
) -> str | None:
    """Why the run's vectors may not join the collection's space (None: they may).

    Same encoder, version, dimensions and metric, and the same canonical encoder options
    (their sha256). A space registered before the options were recorded (migration 0009)
    is compared on what it recorded (its MLM hyperparameters, the collection's chip size):
    any option recorded on both sides that differs refuses the run.
    """
    enc = manifest.encoder
    ours = (enc.name, enc.version, enc.dimensions, enc.metric)
    theirs = (space.encoder_name, space.encoder_version, space.dimensions, space.metric)
    advice = (
        " Vectors of different embedding spaces are never mixed: publish to another"
        " collection (--collection), or encode again with the collection's options."
    )
    if ours != theirs:
        return (
            f"collection {collection_id!r} holds {space.encoder_name} {space.encoder_version}"
            f" vectors ({space.dimensions}d, {space.metric}); the manifest was made by"
            f" {enc.name} {enc.version} ({enc.dimensions}d, {enc.metric})." + advice
        )
    run = space_options(manifest)
    if space.options_sha256 is not None:
        if space.options_sha256 == options_sha256(run):
            return None
        diffs = space_differences(space.options or {}, run)
        return (
            f"collection {collection_id!r} holds vectors of another embedding space: the"
            f" encoder options differ (collection vs run: {'; '.join(diffs) or 'unknown'};"
            f" options sha256 {space.options_sha256[:12]} vs {options_sha256(run)[:12]})." + advice
        )
    diffs = space_differences(_legacy_options(space, existing_stac), run, known_only=True)
    if diffs:
        return (
            f"collection {collection_id!r} holds vectors of another embedding space: the"
            f" encoder options differ from those its space recorded (collection vs run:"
            f" {'; '.join(diffs)})." + advice
        )
    return None


def _merge_items_sql(mode: str) -> sql.Composed:
    conflict = {
        "insert": "",
        "ignore": "ON CONFLICT (collection_id, id) DO NOTHING",
        "upsert": """ON CONFLICT (collection_id, id) DO UPDATE SET
            geometry = excluded.geometry, bbox = excluded.bbox, datetime = excluded.datetime,
            start_datetime = NULL, end_datetime = NULL, properties = excluded.properties,
            assets = excluded.assets, links = excluded.links
          WHERE (ST_AsEWKB(items.geometry), items.bbox, items.datetime, items.start_datetime,
                 items.end_datetime, items.properties, items.assets, items.links)
             IS DISTINCT FROM
                (ST_AsEWKB(excluded.geometry), excluded.bbox, excluded.datetime, NULL::timestamptz,
                 NULL::timestamptz, excluded.properties, excluded.assets, excluded.links)""",
    }[mode]
    return sql.SQL(
        """
WITH merged AS (
  INSERT INTO items (collection_id, id, geometry, bbox, datetime, properties, assets, links)
  SELECT %(cid)s::text, s.id, g.geom,
         ARRAY[ST_XMin(g.geom), ST_YMin(g.geom), ST_XMax(g.geom), ST_YMax(g.geom)],
         s.datetime, s.properties, s.assets, s.links
    FROM publish_staging s
    CROSS JOIN LATERAL (SELECT ST_GeomFromWKB(s.wkb, 4326) AS geom) g
  {conflict}
  RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged
"""
    ).format(conflict=sql.SQL(conflict))


def _merge_embeddings_sql(mode: str, space: Space, table: str = "embeddings") -> sql.Composed:
    col = sql.Identifier(space.column)
    conflict = {
        "insert": sql.SQL(""),
        "ignore": sql.SQL("ON CONFLICT (collection_id, item_id, space_id) DO NOTHING"),
        "upsert": sql.SQL(
            "ON CONFLICT (collection_id, item_id, space_id) DO UPDATE SET {col} = excluded.{col}"
            " WHERE embeddings.{col} IS DISTINCT FROM excluded.{col}"
        ).format(col=col),
    }[mode]
    return sql.SQL(
        "INSERT INTO {table} (collection_id, item_id, space_id, geometry, datetime, {col})"
        " SELECT %(cid)s::text, s.id, %(space)s::int, ST_GeomFromWKB(s.wkb, 4326), s.datetime,"
        " s.embedding FROM publish_staging s {conflict}"
    ).format(col=col, conflict=conflict, table=sql.Identifier("public", table))


def publish(
    source: Path,
    *,
    collection_id: str | None = None,
    mode: Mode = "ignore",
    settings: DatabaseSettings | None = None,
    progress: bool = True,
    defer_index: bool = False,
    storage: Literal["halfvec", "vector"] = "halfvec",
    origin: str = "local",
) -> PublishResult:
    """Publish an encode run (its folder or manifest.json) into the catalogue, atomically."""
    if mode not in MODES:
        raise InvalidInput(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    with metrics.publish_timer(mode) as counted:
        result = _publish(
            Path(source), collection_id, mode, settings, progress, defer_index, storage, origin
        )
        counted["rows"] = result.rows
    return result


def _publish(
    source: Path,
    collection_id: str | None,
    mode: Mode,
    settings: DatabaseSettings | None,
    progress: bool,
    defer_index: bool,
    storage: Literal["halfvec", "vector"],
    origin: str,
) -> PublishResult:
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
    total_bytes = sum(s.bytes for s in manifest.shards)
    timings: dict[str, float] = {"verify_s": time.perf_counter() - t0}

    with connect(settings) as conn:
        conn.execute("set temp_buffers = '256MB'")
        conn.execute("set statement_timeout = 0")
        conn.execute("set jit = off")
        conn.commit()
        with translated(), conn.transaction():
            result = _publish_tx(
                conn, manifest, shard_paths, cid, mode, storage, defer_index, progress,
                started_wall, origin, total_bytes, timings, t0, quicklooks,
            )  # fmt: skip
    result.elapsed_s = time.perf_counter() - t0
    log.info(result.summary())
    return result


def _publish_tx(
    conn: psycopg.Connection,
    manifest: Manifest,
    shard_paths: list[Path],
    cid: str,
    mode: str,
    storage: str,
    defer_index: bool,
    progress: bool,
    started_wall: datetime,
    origin: str,
    total_bytes: int,
    timings: dict[str, float],
    t0: float,
    quicklooks: list[imagery.Quicklook],
) -> PublishResult:
    enc = manifest.encoder
    conn.execute("select pg_advisory_xact_lock(hashtext('embcat-publish:' || %s))", (cid,))
    existing = _existing_collection(conn, cid)
    existing_stac: dict[str, Any] | None = None
    old_space: Space | None = None
    if existing is not None:
        existing_stac, old_space = existing
        if old_space is not None:
            _check_space(cid, old_space, manifest, existing_stac)
            storage = old_space.storage
        else:  # reserved (embcat collections create): keep its title, not its extent
            existing_stac = {k: v for k, v in existing_stac.items() if k != "extent"}
    if storage == "halfvec" and enc.dimensions > spaces_mod.INDEX_MAX_DIMS["halfvec"]:
        log.warning("%d dimensions exceed the halfvec index limit; no HNSW index", enc.dimensions)
    # A stand-in space (id 0) for staging; the real one is registered after validation so
    # that staging never waits on another publish's uncommitted space row.
    staging_space = Space(0, enc.name, enc.version, enc.dimensions, storage)  # type: ignore[arg-type]
    conn.execute(_stage_sql(staging_space))
    conn.execute(
        "CREATE TEMP TABLE publish_ids (id text PRIMARY KEY, chunk int NOT NULL) ON COMMIT DROP"
    )

    state = _MergeState(
        cid=cid, mode=mode, storage=storage, defer_index=defer_index,
        existing_stac=existing_stac, created=existing is None, manifest=manifest,
        timings=timings, known_space=old_space,
        thumbnails=any(imagery.shard_has_thumbnails(pq.read_schema(p)) for p in shard_paths),
    )  # fmt: skip
    for key in ("stage_s", "merge_items_s", "merge_embeddings_s"):
        timings[key] = 0.0
    # The items' constant parts; the space's id is not part of them.
    template = item_template(manifest, cid, staging_space)
    rows = _load(conn, manifest, shard_paths, template, progress, state)
    if rows == 0 or state.space is None:
        raise InvalidInput("the run has no rows to publish")
    space = state.space
    inserted, updated, build = state.inserted, state.updated, state.build

    # the collection's extent is that of every chunk merged
    assert state.extent is not None
    stac = build_collection(
        manifest, cid, space, bbox=state.extent[:4], interval=(state.extent[4], state.extent[5]),
        existing=existing_stac,
    )  # fmt: skip
    stac = imagery.collection_imagery(
        stac, cid, quicklooks, existing_stac, thumbnails=state.thumbnails
    )
    imagery.store_quicklooks(conn, cid, quicklooks)
    conn.execute(
        "update collections set stac = %s, space_id = %s,"
        " updated_at = case when %s then updated_at else now() end"
        " where id = %s and (stac, space_id) is distinct from (%s::jsonb, %s)",
        (Jsonb(stac), space.id, state.created, cid, Jsonb(stac), space.id),
    )
    created = state.created

    # 4. partition, index, statistics, record
    if state.detached:
        t = time.perf_counter()
        spaces_mod.attach_partition(conn, space.id)
        timings["attach_s"] = time.perf_counter() - t
    index_s = 0.0
    built = False
    if build:
        t = time.perf_counter()
        built = spaces_mod.ensure_hnsw_index(conn, space)
        index_s = time.perf_counter() - t
    t = time.perf_counter()
    if inserted or updated:
        # The planner's columns only: statistics of the jsonb documents (properties, assets,
        # links; ~1.5 kB a row) took most of the ANALYZE time and no query plan uses them
        # (autovacuum still gathers them later).
        conn.execute(f"analyze items ({ANALYZE_ITEM_COLUMNS})")
        # the space's partition only (migration 0021)
        conn.execute(
            f"analyze {spaces_mod.space_table(conn, space.id)} (collection_id, item_id, space_id)"
        )
    timings["analyze_s"] = time.perf_counter() - t
    skipped = rows - inserted - updated
    details = {
        "bytes": total_bytes,
        "source_bytes": manifest.source_bytes,
        "shards": len(shard_paths),
        "chunks": state.chunks,
        "space_id": space.id,
        "index_built": built,
        "index_kind": space.index_kind,
        "index_s": round(index_s, 3),
        "load_s": round(time.perf_counter() - t0 - index_s, 3),
        "encoder": f"{enc.name} {enc.version}",
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    rec = conn.execute(
        "insert into publishes (collection_id, manifest_sha256, mode, origin, started_at,"
        " rows_in, inserted, updated, skipped, details)"
        " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning id",
        (cid, manifest.checksum(), mode, origin, started_wall, rows, inserted, updated, skipped,
         Jsonb(details)),
    ).fetchone()  # fmt: skip
    assert rec is not None
    return PublishResult(
        collection_id=cid,
        mode=mode,
        rows=rows,
        inserted=inserted,
        updated=updated,
        skipped=skipped,
        bytes=total_bytes,
        elapsed_s=time.perf_counter() - t0,
        manifest_sha256=manifest.checksum(),
        space_id=space.id,
        created_collection=created,
        index_built=built,
        index_s=index_s,
        publish_id=int(rec[0]),
        index_kind=space.index_kind,
        timings=timings,
    )


@dataclass
class _MergeState:
    """What the chunk merges of one publish accumulate (all in its one transaction)."""

    cid: str
    mode: str
    storage: str
    defer_index: bool
    existing_stac: dict[str, Any] | None
    created: bool
    manifest: Manifest
    timings: dict[str, float]
    known_space: Space | None = None  # the existing collection's space (checked)
    space: Space | None = None
    build: bool = False
    detached: str | None = None  # the new space's partition table, attached at the end
    inserted: int = 0
    updated: int = 0
    extent: list[Any] | None = None
    chunks: int = 0
    thumbnails: bool = False  # some shard has the thumbnail column


_DONE = object()


def _produce(
    manifest: Manifest,
    shard_paths: list[Path],
    template: ItemTemplate,
    storage: str,
    problems: _Problems,
    out: queue.Queue[Any],
    stop: threading.Event,
) -> None:
    """Read, validate and encode record batches into ``out`` (runs in its own thread).

    Puts ``(rows, COPY bytes or None, extent or None)`` per batch (None once any row is
    bad: from then on batches are only validated, to name more offending rows), then
    ``_DONE``, or the exception that stopped it. Returns early when ``stop`` is set.
    """

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        dims = manifest.encoder.dimensions
        batch_rows = int(min(16384, max(256, BATCH_BYTES // (4 * dims))))
        encoder = _Encoder(dims, storage, template)
        for path in shard_paths:
            offset = 0
            for batch in _iter_batches(path, batch_rows):
                if stop.is_set():
                    return
                checked = _validate_batch(batch, path.name, offset, dims, storage, problems)
                data, extent = None, None
                if checked is not None and problems.count == 0:
                    stored, extent = checked
                    # a memoryview: the writer slices it into 128 kB pieces without copies
                    data = encoder.encode(batch, stored)
                offset += batch.num_rows
                if not put((batch.num_rows, data, extent)) or problems.full:
                    break
            if problems.full:
                break
        put(_DONE)
    except BaseException as exc:  # noqa: BLE001 - handed to the loading thread
        put(exc)


def _load(
    conn: psycopg.Connection,
    manifest: Manifest,
    shard_paths: list[Path],
    template: ItemTemplate,
    progress: bool,
    state: _MergeState,
) -> int:
    """Stream the shards into the catalogue in chunks; return the number of input rows.

    A reader thread validates and encodes record batches while this thread COPYs a chunk
    (about CHUNK_BYTES of vectors) into the TEMP staging table and merges it into items
    and embeddings; the staging table is emptied after each merge. So the database and
    Python work at the same time, and neither memory nor temporary disk grows with the
    input. Everything stays in the caller's transaction: a bad row in the last chunk
    still leaves the catalogue untouched.
    """
    from tqdm import tqdm

    dims = manifest.encoder.dimensions
    chunk_rows = max(1000, CHUNK_BYTES // (4 * dims))
    problems = _Problems()
    q: queue.Queue[Any] = queue.Queue(maxsize=QUEUED_BATCHES)
    stop = threading.Event()
    reader = threading.Thread(
        target=_produce,
        args=(manifest, shard_paths, template, state.storage, problems, q, stop),
        name="publish-reader",
        daemon=True,
    )
    rows = 0
    bar = tqdm(
        total=manifest.rows, unit="row", unit_scale=True, disable=not progress,
        desc="publish", leave=False,
    )  # fmt: skip
    reader.start()
    try:
        done = False
        while not done:
            staged = 0
            extent: list[Any] | None = None
            t = time.perf_counter()
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY publish_staging FROM STDIN (FORMAT BINARY)",
                    writer=QueuedLibpqWriter(cur),  # sends from a thread while we wait
                ) as copy,
            ):
                copy.write(_COPY_HEADER)
                while staged < chunk_rows:
                    item = q.get()
                    if item is _DONE:
                        done = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    n, data, batch_extent = item
                    rows += n
                    bar.update(n)
                    if data is not None and not problems.count:
                        copy.write(data)
                        staged += n
                        extent = _union(extent, batch_extent)
                copy.write(_COPY_TRAILER)
            state.timings["stage_s"] += time.perf_counter() - t
            if problems.count:
                continue  # drain the reader: it names up to MAX_REPORTED bad rows
            if staged:
                assert extent is not None
                _merge_chunk(conn, state, staged, extent)
        if problems.count:
            raise InvalidInput(
                f"invalid input, nothing was published ({problems.count}"
                f"{'+' if problems.full else ''} bad rows); first offending rows:\n  "
                + "\n  ".join(problems.rows)
            )
    finally:
        stop.set()
        reader.join()
        bar.close()
    return rows


def _merge_chunk(
    conn: psycopg.Connection, state: _MergeState, staged: int, extent: list[Any]
) -> None:
    """Check the staged chunk (``staged`` rows within ``extent``), then INSERT .. SELECT
    it into items and embeddings."""
    manifest, cid, timings = state.manifest, state.cid, state.timings
    enc = manifest.encoder
    # duplicate ids: within the chunk, or already seen in an earlier chunk of this run
    state.chunks += 1
    fresh = conn.execute(
        "WITH ins AS (INSERT INTO publish_ids SELECT id, %s FROM publish_staging"
        " ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM ins",
        (state.chunks,),
    ).fetchone()
    if fresh != (staged,):
        dups = conn.execute(
            "select s.id, count(*) + max(case when p.chunk < %(k)s then 1 else 0 end)"
            " from publish_staging s left join publish_ids p on p.id = s.id group by s.id"
            " having count(*) + max(case when p.chunk < %(k)s then 1 else 0 end) > 1"
            " order by s.id limit %(n)s",
            {"k": state.chunks, "n": MAX_REPORTED},
        ).fetchall()
        listed = ", ".join(f"{d[0]!r} ({d[1]}x)" for d in dups)
        raise InvalidInput(f"duplicate item ids in the input, nothing was published: {listed}")
    state.extent = _union(state.extent, extent)

    if state.space is None:  # first chunk: the merge lock, the space, the collection row
        # The global lock comes first: a new space (or one without its partition) takes it
        # exclusively, before its row is inserted, so that attaching its partition
        # (which locks embedding_spaces and items against writes) never waits on another
        # publish's uncommitted space row while that one waits for the lock.
        known = state.known_space or spaces_mod.find_space(
            conn, encoder_name=enc.name, encoder_version=enc.version,
            dimensions=enc.dimensions, storage=state.storage, metric=enc.metric,
            options=space_options(manifest),
        )  # fmt: skip
        new_partition = known is None or not spaces_mod.has_partition(conn, known.id)
        spaces_mod.merge_lock(conn, exclusive=new_partition)
        if state.known_space is not None:
            space = state.known_space
            if space.options_sha256 is None:  # registered before 0009; the run matched it
                space = spaces_mod.adopt_options(conn, space, space_options(manifest))
        else:
            space = spaces_mod.get_or_create_space(
                conn,
                encoder_name=enc.name,
                encoder_version=enc.version,
                dimensions=enc.dimensions,
                storage=state.storage,  # type: ignore[arg-type]
                metric=enc.metric,
                normalized=enc.normalized,
                mlm=enc.mlm,
                options=space_options(manifest),
            )
        state.space = space
        if state.created:
            stac = build_collection(
                manifest, cid, space, bbox=state.extent[:4],
                interval=(state.extent[4], state.extent[5]),
            )  # fmt: skip
            conn.execute(
                "insert into collections (id, stac, space_id) values (%s, %s, %s)",
                (cid, Jsonb(stac), space.id),
            )
        # (checked again under the lock: a concurrent publish of the same new space may
        # have attached it while this one waited)
        if new_partition and not spaces_mod.has_partition(conn, space.id):
            if spaces_mod.holds_no_rows(conn, space.id):
                # its partition is filled as a table of its own and attached after the
                # last chunk (indexes built in bulk, foreign keys checked by one join; see
                # spaces.create_partition_table)
                state.detached = spaces_mod.create_partition_table(conn, space.id)
            else:  # rows in the default partition (a mirror's): move them in now
                spaces_mod.ensure_partition(conn, space.id)
        state.build = (
            (not state.defer_index) and space.indexable and not spaces_mod.has_index(conn, space)
        )
        spaces_mod.merge_lock(conn, space.id, exclusive=state.build)
    space = state.space
    # A collection this publish created holds nothing but what it merges, and the run's
    # ids are unique (checked above): plain INSERTs, without ON CONFLICT's speculative
    # insertion, and nothing to clash with.
    mode = "insert" if state.created else state.mode
    if state.mode == "insert" and not state.created:
        clash = conn.execute(
            "select s.id from publish_staging s join items i"
            " on i.collection_id = %s and i.id = s.id order by s.id limit %s",
            (cid, MAX_REPORTED),
        ).fetchall()
        if clash:
            raise Conflict(
                f"mode insert: {len(clash)}{'+' if len(clash) == MAX_REPORTED else ''} items"
                f" already exist in {cid!r}: {', '.join(repr(c[0]) for c in clash)}"
                " (use --mode upsert or --mode ignore)"
            )
    t = time.perf_counter()
    counts = conn.execute(_merge_items_sql(mode), {"cid": cid}).fetchone()
    assert counts is not None
    state.inserted += int(counts[0])
    state.updated += int(counts[1])
    timings["merge_items_s"] += time.perf_counter() - t
    if state.thumbnails or mode == "upsert":
        imagery.merge_thumbnails(conn, cid, mode)
    t = time.perf_counter()
    if state.detached:  # nothing there to conflict with (a new space; ids checked above)
        conn.execute(
            _merge_embeddings_sql("insert", space, state.detached),
            {"cid": cid, "space": space.id},
        )
    else:
        conn.execute(_merge_embeddings_sql(mode, space), {"cid": cid, "space": space.id})
    timings["merge_embeddings_s"] += time.perf_counter() - t
    conn.execute("TRUNCATE publish_staging")


def build_index(
    collection_id: str,
    settings: DatabaseSettings | None = None,
    *,
    kind: spaces_mod.IndexKind | None = None,
    rebuild: bool = False,
) -> str | None:
    """Build the index of a collection's space if absent (``embcat index build``); with
    ``kind`` other than the space's, switch the space to it (new index, then swap); with
    ``rebuild``, build anew. Returns the kind built, or None if nothing was built.

    Takes the merge lock exclusively, like a publish that builds an index, so that it
    never deadlocks with a concurrent publish.
    """
    from embcat.catalog.errors import NotFound

    with connect(settings) as conn, translated():
        with conn.transaction():
            conn.execute("set local statement_timeout = 0")
            space = spaces_mod.collection_space(conn, collection_id)
            if space is None:
                raise NotFound(f"collection {collection_id!r} has no embeddings")
            # the global lock exclusively only to attach a partition (see the module)
            spaces_mod.merge_lock(conn, exclusive=not spaces_mod.has_partition(conn, space.id))
            spaces_mod.merge_lock(conn, space.id, exclusive=True)
            built = spaces_mod.ensure_index(conn, space, kind=kind, rebuild=rebuild, drop_old=False)
        if built:  # the replaced index goes once the new one is committed, concurrently
            conn.commit()
            conn.autocommit = True
            spaces_mod.finish_swap(conn, space.id)
        return (kind or space.index_kind) if built else None


def list_publishes(
    conn: psycopg.Connection, collection_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Publish records, newest first."""
    rows = conn.execute(
        "select id, collection_id, mode, origin, manifest_sha256, started_at, finished_at,"
        " rows_in, inserted, updated, skipped, details from publishes"
        " where %(cid)s::text is null or collection_id = %(cid)s"
        " order by finished_at desc, id desc limit %(limit)s",
        {"cid": collection_id, "limit": limit},
    ).fetchall()
    keys = (
        "id", "collection_id", "mode", "origin", "manifest_sha256", "started_at",
        "finished_at", "rows", "inserted", "updated", "skipped", "details",
    )  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in rows]


__all__ = [
    "MODES",
    "EmbcatError",
    "PublishResult",
    "build_index",
    "check_target",
    "list_publishes",
    "load_manifest",
    "publish",
    "verify_shards",
]
