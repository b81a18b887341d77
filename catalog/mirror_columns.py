"""An export page straight to the mirror's COPY rows, column by column (issue 18 item 4).

The initial phase of a mirror receives whole pages of the bulk export (the exchange
format of catalog.export) and writes them through the staging table of
``catalog.mirror_write``. Building a Python dict per item and serialising it again cost
more CPU than the source's export and the database's merge together, on a machine where
all three share the cores; here each item document (properties, assets, links) is
assembled from the page's Arrow columns with Arrow's string kernels: JSON text per
distinct value where values repeat (strings), casts for numbers and booleans, the export's
JSON-kind columns as they are, href prefixes replaced column-wise. The result is the same
set of documents as ``catalog.mirror.rows_from_table`` (jsonb normalises key order and
spacing; a test holds both paths equal).

Used only where the transfer dtype is lossless for the local storage (the checksums are
verified against the values received, and the asset's file fields stay as sent); lossy
pages go the row path, which rewrites the file fields.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from embcat.catalog.errors import Conflict
from embcat.catalog.exchange_format import (
    ASSETS_COLUMN,
    BBOX_COLUMN,
    DATETIME_COLUMNS,
    GEOMETRY_COLUMN,
    ID_COLUMN,
    LINKS_COLUMN,
    NESTED,
    json_texts,
)
from embcat.catalog.imagery import THUMBNAIL_ASSET
from embcat.catalog.item_shape import rfc3339_texts
from embcat.catalog.mirror_write import _FIELDS
from embcat.catalog.pgbinary import (
    NULL_FIELD,
    field_count,
    field_lengths,
    float8_array_column,
    jsonb_fields,
    rows_buffer,
    timestamp_column,
    vector_column,
)
from embcat.catalog.store.spaces import Space
from embcat.catalog.vectors import EMBEDDINGS_ASSET, embedding_href, npy_bytes, stored_values

_S = pa.string()
_URL_SAFE = r"^[A-Za-z0-9_.~-]+$"


def _text(value: str | bytes) -> pa.Scalar:
    return pa.scalar(value if isinstance(value, str) else value.decode(), _S)


def _join(*parts: Any, sep: str = "") -> pa.Array:
    """Element-wise concatenation; a null part makes the result null."""
    return pc.binary_join_element_wise(*parts, sep)


def _skip_join(parts: list[pa.Array], n: int) -> pa.Array:
    """Element-wise join with ``,`` of the non-null parts ("" where all are null)."""
    if not parts:
        return pa.array([""] * n, _S)
    # A leading "" that is never null: pyarrow 26's skip mode drops the rows in which every
    # part is null (the result is shorter than the inputs), so each row gets a non-null
    # first part and the "," it adds is cut off again.
    lead = pa.array([""] * n, _S)
    joined = pc.binary_join_element_wise(lead, *parts, ",", null_handling="skip")
    return pc.utf8_slice_codeunits(joined, 1)


def _json_strings(col: pa.Array) -> pa.Array:
    """Each value as a JSON string, escaped once per distinct value (orjson)."""
    enc = pc.dictionary_encode(col)
    words = pa.array(
        [None if v is None else orjson.dumps(v).decode() for v in enc.dictionary.to_pylist()], _S
    )
    return pc.take(words, enc.indices)


def _json_value(col: pa.Array, kind: str) -> pa.Array:
    """JSON text of each value of a column of an export ``kind`` (null stays null)."""
    if kind == "json":
        return col.cast(_S)
    if kind == "string":
        return _json_strings(col)
    if kind in ("int64", "float64", "bool"):
        return pc.cast(col, _S)
    if kind in ("list_string", NESTED):
        return json_texts(col)
    raise ValueError(f"unknown column kind {kind!r}")


def _member(name: str, value: pa.Array) -> pa.Array:
    """``"name":value`` (null where the value is null)."""
    return _join(_text(orjson.dumps(name) + b":"), value)


def _local_hrefs(col: pa.Array, remote_base: str) -> pa.Array:
    """Hrefs under the remote's base URL made root-relative (as catalog.mirror does)."""
    return pc.replace_substring_regex(col.cast(_S), "^" + re.escape(remote_base) + "/", "/")


def _properties(table: pa.Table, meta: dict[str, Any]) -> pa.Array:
    n = table.num_rows
    parts: list[pa.Array] = []
    for name in DATETIME_COLUMNS:
        if name not in table.column_names:
            continue
        col = table.column(name).combine_chunks()
        value = _join(_text('"'), rfc3339_texts(col), _text('"'))
        if name == "datetime":  # a null datetime is written as null (STAC requires the key)
            value = pc.fill_null(value, _text("null"))
        parts.append(_member(name, value))
    if "datetime" not in table.column_names:
        parts.append(pa.array(['"datetime":null'] * n, _S))
    for p in meta.get("properties", []):
        col = table.column(p["column"]).combine_chunks()
        parts.append(_member(p["name"], _json_value(col, p["kind"])))
    return _join(_text("{"), _skip_join(parts, n), _text("}"))


def _assets(
    table: pa.Table, meta: dict[str, Any], ids: pa.Array, href_of: Callable[[pa.Array], pa.Array],
    remote_base: str,
) -> pa.Array:  # fmt: skip
    n = table.num_rows
    described = meta.get("assets") or {}
    if ASSETS_COLUMN not in table.column_names or not described:
        return pa.array(["{}"] * n, _S)
    column = table.column(ASSETS_COLUMN).combine_chunks()
    parts: list[pa.Array] = []
    for key, fields in described.items():
        asset = pc.struct_field(column, key)
        members: list[pa.Array] = []
        for f, kind in fields.items():
            value = pc.struct_field(asset, f)
            if f == "href":
                if key == EMBEDDINGS_ASSET:
                    value = href_of(ids)
                elif key == THUMBNAIL_ASSET:  # a mirror holds no thumbnail PNGs: origin's URL
                    value = value.cast(_S)
                else:
                    value = _local_hrefs(value, remote_base)
                value = _json_strings(value)
            else:
                value = _json_value(value, kind)
            members.append(_member(f, value))
        obj = _join(_text("{"), _skip_join(members, n), _text("}"))
        present = pc.is_valid(column) if column.null_count else None
        asset_present = pc.is_valid(asset)
        if present is not None:
            asset_present = pc.and_(present, asset_present)
        obj = pc.if_else(asset_present, obj, pa.scalar(None, _S))
        parts.append(_member(key, obj))
    return _join(_text("{"), _skip_join(parts, n), _text("}"))


def _links(table: pa.Table, remote_base: str) -> pa.Array:
    n = table.num_rows
    if LINKS_COLUMN not in table.column_names:
        return pa.array(["[]"] * n, _S)
    column = table.column(LINKS_COLUMN).combine_chunks()
    flat = column.flatten()
    members: list[pa.Array] = []
    for f in ("rel", "href", "type", "title"):
        if flat.type.get_field_index(f) < 0:
            continue
        value = pc.struct_field(flat, f)
        if f == "href":
            value = _local_hrefs(value, remote_base)
        members.append(_member(f, _json_strings(value)))
    objects = _join(_text("{"), _skip_join(members, len(flat)), _text("}"))
    offsets = pc.subtract(column.offsets, column.offsets[0])
    lists = pa.ListArray.from_arrays(offsets, objects)
    inner = pc.fill_null(pc.binary_join(lists, ","), _text(""))
    return _join(_text("["), inner, _text("]"))


def _href_maker(collection_id: str) -> Callable[[pa.Array], pa.Array]:
    """``embedding_href`` of each id, column-wise (ids outside the URL-safe set quoted)."""
    prefix, suffix = embedding_href(collection_id, "x").rsplit("/x/", 1)
    head, tail = _text(prefix + "/"), _text("/" + suffix)

    def hrefs(ids: pa.Array) -> pa.Array:
        safe = pc.match_substring_regex(ids, _URL_SAFE)
        if pc.all(safe).as_py():
            return _join(head, ids, tail)
        return pa.array([embedding_href(collection_id, v) for v in ids.to_pylist()], _S)

    return hrefs


def page_file_fields(table: pa.Table) -> tuple[list[Any], list[Any]]:
    """``file:checksum`` and ``file:size`` of each row's ``embeddings`` asset (None: absent)."""
    none = [None] * table.num_rows
    if ASSETS_COLUMN not in table.column_names:
        return none, none
    column = table.column(ASSETS_COLUMN).combine_chunks()
    if column.type.get_field_index(EMBEDDINGS_ASSET) < 0:
        return none, none
    asset = pc.struct_field(column, EMBEDDINGS_ASSET)

    def field(name: str) -> list[Any]:
        if asset.type.get_field_index(name) < 0:
            return none
        return pc.struct_field(asset, name).to_pylist()

    return field("file:checksum"), field("file:size")


def verify_columns(
    ids: list[str], checksums: list[Any], values: np.ndarray, sizes: list[Any] | None = None
) -> int:
    """Each vector (as stored, float32) against its ``file:checksum`` (and ``file:size``):
    the canonical ``.npy`` bytes are a constant header plus the little-endian values, so
    the values are converted once and a copied hash state is fed per row. Conflict on the
    first mismatch; returns how many were checked."""
    n, dims = values.shape
    header = npy_bytes(np.zeros(dims, np.float32))[: -4 * dims] if dims else b""
    base = hashlib.sha256(header)
    size = len(header) + 4 * dims
    le = np.ascontiguousarray(values, dtype="<f4")
    checked = 0
    for k in range(n):
        expected = checksums[k]
        if not expected:
            continue
        h = base.copy()
        h.update(le[k].data)
        declared = sizes[k] if sizes is not None else None
        if "1220" + h.hexdigest() != expected or declared not in (None, size):
            raise Conflict(
                f"checksum mismatch for item {ids[k]!r}: the vector received does not match"
                f" its file:checksum {expected}"
            )
        checked += 1
    return checked


def _timestamp_fields(table: pa.Table, name: str) -> pa.Array:
    n = table.num_rows
    if name not in table.column_names:
        return pa.array([NULL_FIELD] * n, pa.binary())
    col = pc.cast(table.column(name).combine_chunks(), pa.timestamp("us", tz="UTC"))
    us = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    valid = pc.is_valid(col).to_numpy(zero_copy_only=False) if col.null_count else None
    return timestamp_column(us, valid)


def page_documents(
    table: pa.Table, meta: dict[str, Any], local_cid: str, remote_base: str
) -> list[pa.Array]:
    """The properties, assets and links JSON texts of each row of an export page."""
    ids = table.column(ID_COLUMN).combine_chunks().cast(_S)
    return [
        _properties(table, meta),
        _assets(table, meta, ids, _href_maker(local_cid), remote_base),
        _links(table, remote_base),
    ]


def encode_page(
    table: pa.Table,
    meta: dict[str, Any],
    vectors: np.ndarray,
    local_cid: str,
    remote_base: str,
    space: Space,
) -> tuple[list[str], int, memoryview]:
    """(ids, checksums verified, COPY BINARY rows of the staging table) of an export page
    whose vectors ``vectors`` (float32) are exactly what the local storage will hold."""
    n = table.num_rows
    ids = table.column(ID_COLUMN).combine_chunks().cast(_S)
    id_list: list[str] = ids.to_pylist()
    stored = stored_values(vectors, space.storage).reshape(n, space.dimensions)
    checksums, sizes = page_file_fields(table)
    verified = verify_columns(id_list, checksums, stored, sizes)
    bbox = table.column(BBOX_COLUMN).combine_chunks()
    bounds = np.column_stack(
        [
            pc.struct_field(bbox, k).to_numpy(zero_copy_only=False)
            for k in ("xmin", "ymin", "xmax", "ymax")
        ]
    )
    docs = page_documents(table, meta, local_cid, remote_base)
    id_bytes = ids.cast(pa.binary())
    wkbs = table.column(GEOMETRY_COLUMN).combine_chunks().cast(pa.binary())
    joined = pc.binary_join_element_wise(
        field_count(_FIELDS),
        field_lengths(id_bytes), id_bytes,
        field_lengths(wkbs), wkbs,
        float8_array_column(bounds),
        *[_timestamp_fields(table, name) for name in DATETIME_COLUMNS],
        *[f for doc in docs for f in jsonb_fields(doc.cast(pa.binary()))],
        vector_column(stored, space.storage),
        b"",
    )  # fmt: skip
    return id_list, verified, rows_buffer(joined)
