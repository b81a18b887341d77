"""Imagery next to the vectors: chip thumbnails and scene quicklooks in the catalogue.

Chip thumbnails (issue 20): the encode job renders a PNG per chip into the shards'
optional ``thumbnail`` column (encoders.thumbnails). The publish job (catalog/publish.py)
reads that column with the others, checks each PNG, adds it as one more field of the same
binary COPY into its staging table, and gives the item a ``thumbnail`` asset; the merge of
each chunk copies the PNGs into ``item_thumbnails`` (migration 0020), with the publish's
mode (insert / ignore / upsert). A run without the column publishes as before. The rows of
both tables are read and written by ``catalog.store.imagery``.

Scene quicklooks: the manifest's optional ``quicklooks`` records name a PNG per source scene
in the run folder (Web Mercator, with WGS84 bounds). The publish checks their sizes and
checksums before its transaction, stores them in ``collection_quicklooks`` and lists them
as the collection's ``quicklook-<key>`` assets (roles ``overview``, ``embcat:bbox``). A
quicklook file that is absent (a remote publish uploads shards only) is skipped with a
warning; one that does not match the manifest refuses the publish.

The API serves both (api/imagery.py) through :func:`thumbnail_png` and
:func:`quicklook_png`. Mirror and export carry the asset entries, not the PNG bytes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from embcat.catalog import pgbinary
from embcat.catalog.errors import InvalidInput, NotFound, translated
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import imagery as store_imagery
from embcat.catalog.store import items as store_items
from embcat.encoders.manifest import (
    QUICKLOOK_KEY_PATTERN,
    THUMBNAIL_COLUMN,
    Manifest,
    QuicklookRecord,
    quicklook_records,
)

log = logging.getLogger(__name__)

THUMBNAIL_ASSET = "thumbnail"
QUICKLOOK_ASSET_PREFIX = "quicklook-"
PNG_MEDIA_TYPE = "image/png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_THUMBNAIL_BYTES = 1 << 20
MAX_QUICKLOOK_BYTES = 16 << 20
MAX_QUICKLOOK_ASSETS = 1000  # listed on the collection (all are stored and served)
THUMBNAIL_TITLE = "Chip quicklook (true colour)"
THUMBNAIL_FIELDS = {"type": PNG_MEDIA_TYPE, "roles": ["thumbnail"], "title": THUMBNAIL_TITLE}
_BIN = pa.binary()


# -- shards: the optional thumbnail column --------------------------------------------------


def shard_has_thumbnails(schema: pa.Schema) -> bool:
    return schema.get_field_index(THUMBNAIL_COLUMN) >= 0


def thumbnail_schema_problems(name: str, schema: pa.Schema) -> list[str]:
    idx = schema.get_field_index(THUMBNAIL_COLUMN)
    if idx < 0:
        return []
    t = schema.field(idx).type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return []
    return [f"{name}: column {THUMBNAIL_COLUMN!r} has type {t}, expected binary (PNG bytes)"]


def thumbnail_problems(batch: pa.RecordBatch) -> list[tuple[np.ndarray, str]]:
    """Rows whose thumbnail is no PNG or too large: (row positions, what) pairs."""
    if batch.schema.get_field_index(THUMBNAIL_COLUMN) < 0:
        return []
    col = batch.column(THUMBNAIL_COLUMN).cast(_BIN)
    present = col.is_valid()
    magic = pc.equal(pc.binary_slice(col, 0, len(PNG_MAGIC)), pa.scalar(PNG_MAGIC, _BIN))
    sizes = pc.binary_length(col)
    bad_magic = pc.and_(present, pc.invert(pc.fill_null(magic, False)))
    too_big = pc.and_(present, pc.greater(pc.fill_null(sizes, 0), MAX_THUMBNAIL_BYTES))
    out = []
    for mask, what in (
        (bad_magic, "thumbnail is not a PNG image"),
        (too_big, f"thumbnail is larger than {MAX_THUMBNAIL_BYTES} bytes"),
    ):
        rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        if len(rows):
            out.append((rows, what))
    return out


class ThumbnailEncoder:
    """The thumbnail parts of the publish's staging rows: the item's ``thumbnail`` asset
    (JSON, column-wise like the other documents) and the COPY field of the PNG bytes."""

    def __init__(self, href_prefix: str) -> None:
        head = THUMBNAIL_FIELDS
        self._open = pa.scalar(
            b',"' + THUMBNAIL_ASSET.encode() + b'":{"href":' + orjson.dumps(href_prefix)[:-1],
            _BIN,
        )
        self._close = pa.scalar(b'/thumbnail.png",' + orjson.dumps(head)[1:], _BIN)

    @staticmethod
    def _column(batch: pa.RecordBatch) -> pa.Array | None:
        if batch.schema.get_field_index(THUMBNAIL_COLUMN) < 0:
            return None
        return batch.column(THUMBNAIL_COLUMN).cast(_BIN)

    def asset_json(self, batch: pa.RecordBatch, href_ids: pa.Array) -> pa.Array:
        """``,"thumbnail":{...}`` for rows with a thumbnail, empty bytes for the others."""
        col = self._column(batch)
        empty = pa.scalar(b"", _BIN)
        if col is None:
            return pa.array([b""] * batch.num_rows, _BIN)
        part = pc.binary_join_element_wise(self._open, href_ids, self._close, b"")
        return pc.if_else(col.is_valid(), part, empty)

    def copy_field(self, batch: pa.RecordBatch) -> list[pa.Array]:
        """The staging row's last field: length header + PNG bytes, or NULL."""
        n = batch.num_rows
        col = self._column(batch)
        if col is None:
            return [pa.array([pgbinary.NULL_FIELD] * n, _BIN)]
        lengths = pc.fill_null(pc.binary_length(col), -1).to_numpy(zero_copy_only=False)
        header = np.asarray(lengths, dtype=">i4").tobytes()
        headers = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(4), n, [None, pa.py_buffer(header)]
        ).cast(_BIN)
        return [headers, pc.fill_null(col, b"")]


# -- scene quicklooks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Quicklook:
    record: QuicklookRecord
    path: Path


def verify_quicklooks(manifest: Manifest, folder: Path) -> list[Quicklook]:
    """The run's quicklook files, checked against the manifest (InvalidInput on a mismatch;
    an absent file is skipped with a warning)."""
    try:
        records = quicklook_records(manifest)
    except ValueError as exc:
        raise InvalidInput(f"invalid manifest: quicklooks: {exc}") from exc
    out: list[Quicklook] = []
    problems: list[str] = []
    keys: set[str] = set()
    root = folder.resolve()
    for rec in records:
        if rec.key in keys:
            problems.append(f"quicklook key {rec.key!r} appears twice")
            continue
        keys.add(rec.key)
        path = (folder / rec.path).resolve()
        if root not in path.parents:
            problems.append(f"{rec.path}: quicklook path leaves the run folder")
            continue
        if not path.is_file():
            log.warning("%s: quicklook named by the manifest is absent; skipped", rec.path)
            continue
        size = path.stat().st_size
        if size != rec.bytes or size > MAX_QUICKLOOK_BYTES:
            problems.append(f"{rec.path}: {size} bytes, the manifest says {rec.bytes}")
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != rec.sha256:
            problems.append(f"{rec.path}: sha256 does not match the manifest")
            continue
        if not data.startswith(PNG_MAGIC):
            problems.append(f"{rec.path}: not a PNG image")
            continue
        w, s, e, n = rec.bbox
        if not (-180 <= w <= e <= 180 and -90 <= s <= n <= 90):
            problems.append(f"{rec.path}: bbox {rec.bbox} is not a WGS84 box (w, s, e, n)")
            continue
        out.append(Quicklook(rec, path))
    if problems:
        raise InvalidInput("quicklooks do not match the manifest: " + "; ".join(problems[:10]))
    return out


def quicklook_href(collection_id: str, key: str) -> str:
    return f"/collections/{quote(collection_id, safe='')}/quicklooks/{key}.png"


def store_quicklooks(
    conn: psycopg.Connection, collection_id: str, quicklooks: Sequence[Quicklook]
) -> None:
    """Insert or replace the collection's quicklook rows (one file in memory at a time)."""
    for q in quicklooks:
        r = q.record
        store_imagery.put_quicklook(
            conn, collection_id, r.key, source_item=r.source_item, bbox=list(r.bbox),
            acquired=r.acquired, png=q.path.read_bytes(), sha256=r.sha256,
        )  # fmt: skip


def collection_imagery(
    stac: dict[str, Any],
    collection_id: str,
    quicklooks: Sequence[Quicklook],
    existing: dict[str, Any] | None,
    *,
    thumbnails: bool,
) -> dict[str, Any]:
    """``stac`` (a publish's collection document) with the quicklook assets of this run and
    of earlier publishes, and the ``thumbnail`` item asset when chips have thumbnails."""
    assets: dict[str, Any] = {
        k: a
        for k, a in ((existing or {}).get("assets") or {}).items()
        if k.startswith(QUICKLOOK_ASSET_PREFIX) and isinstance(a, dict)
    }
    for q in quicklooks:
        r = q.record
        assets[QUICKLOOK_ASSET_PREFIX + r.key] = {
            "href": quicklook_href(collection_id, r.key),
            "type": PNG_MEDIA_TYPE,
            "roles": ["overview"],
            "title": f"Quicklook of source scene {r.source_item}",
            "embcat:bbox": list(r.bbox),
            "embcat:crs": r.crs,
            "embcat:source_item": r.source_item,
            **({"embcat:datetime": r.acquired.isoformat()} if r.acquired else {}),
        }
    out = dict(stac)
    if assets:
        keep = sorted(assets)[:MAX_QUICKLOOK_ASSETS]
        out["assets"] = {**(out.get("assets") or {}), **{k: assets[k] for k in keep}}
    had = THUMBNAIL_ASSET in ((existing or {}).get("item_assets") or {})
    if thumbnails or had:
        out["item_assets"] = {
            **(out.get("item_assets") or {}),
            THUMBNAIL_ASSET: {"type": PNG_MEDIA_TYPE, "roles": ["thumbnail"],
                              "title": THUMBNAIL_TITLE},
        }  # fmt: skip
    return out


# -- reading (the API) ------------------------------------------------------------------------


def thumbnail_png(conn: psycopg.Connection, collection_id: str, item_id: str) -> bytes:
    """The item's thumbnail PNG; NotFound names what is missing."""
    with translated():
        png = store_imagery.thumbnail(conn, collection_id, item_id)
        if png is not None:
            return png
        if store_collections.exists(conn, collection_id):
            if store_items.exists(conn, collection_id, item_id):
                raise NotFound(f"item {item_id!r} of collection {collection_id!r} has no thumbnail")
            raise NotFound(f"item {item_id!r} does not exist in collection {collection_id!r}")
    raise NotFound(f"collection {collection_id!r} does not exist")


_KEY = re.compile(QUICKLOOK_KEY_PATTERN)


def quicklook_png(conn: psycopg.Connection, collection_id: str, key: str) -> tuple[bytes, str]:
    """A scene quicklook of the collection: (PNG bytes, sha256); NotFound if absent."""
    if not _KEY.match(key):
        raise NotFound(f"no quicklook {key!r} in collection {collection_id!r}")
    with translated():
        found = store_imagery.quicklook(conn, collection_id, key)
        if found is not None:
            return found
        if store_collections.exists(conn, collection_id):
            raise NotFound(f"no quicklook {key!r} in collection {collection_id!r}")
    raise NotFound(f"collection {collection_id!r} does not exist")
