"""The rows of an export: the ``SELECT`` of its binary COPY (typed fields taken out of the
jsonb documents by PostgreSQL) and the Arrow record batches built from the COPY rows,
column-wise."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
from psycopg import sql

from embcat.catalog.exchange_format import (
    BBOX_TYPE,
    DATETIME_COLUMNS,
    KIND_TYPES,
    LINK_TYPE,
    NESTED,
)
from embcat.catalog.export_plan import KIND_PG_TYPES, ExportPlan
from embcat.catalog.export_schema import asset_type, extensions
from embcat.catalog.item_shape import (
    DRIVE_PATH,
    GENERATED_RELS,
    URI_SCHEME,
    source_uri,
    stac_version_for,
)
from embcat.catalog.pgbinary import PG_EPOCH_US, decode_vectors
from embcat.catalog.quantize import (
    array_of,
    quantize,
)
from embcat.catalog.stac import SERVED_PREFIXES, SOURCE_RELS


def _embedding_array(raw: Any, plan: ExportPlan) -> pa.Array:
    """The ``embedding`` column from pgvector binary values. Where the dtype is the stored
    one (float16 of a halfvec space, float32 of a vector space) the values are only
    byte-swapped, not converted; the column then shares the swapped array's memory."""
    space, dtype, layout = plan.space, plan.request.dtype, plan.request.vector_layout
    stored = "float16" if space.storage == "halfvec" else "float32"
    data = b"".join(raw)
    if dtype != stored:
        values = decode_vectors(data, space.dimensions, space.storage)
        return array_of(quantize(values, dtype, plan.quantization), dtype, space.dimensions, layout)
    values = decode_vectors(data, space.dimensions, space.storage, stored=True)
    return array_of(values, dtype, space.dimensions, layout)


def _json_text(value: Any) -> Any:
    """Compact JSON text with sorted keys (the ``json`` kind), from a jsonb value's text."""
    if value is None:
        return None
    parsed = orjson.loads(value)
    if parsed is None:
        return None
    return orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS).decode()


def _json_list(value: Any) -> Any:
    return None if value is None else orjson.loads(value)


def _extract(doc: sql.Composable, key: str, kind: str) -> sql.Composable:
    """SQL for one property / asset field of ``doc`` (jsonb), typed for ``kind``.

    PostgreSQL takes the values out of the jsonb documents, so Python never parses the
    properties or assets; JSON ``null`` and a missing key both give SQL NULL.
    """
    k = sql.Literal(key)
    if kind == "string":
        return sql.SQL("{d} ->> {k}").format(d=doc, k=k)
    if kind == "int64":
        return sql.SQL("({d} ->> {k})::numeric::int8").format(d=doc, k=k)
    if kind == "float64":
        return sql.SQL("({d} ->> {k})::float8").format(d=doc, k=k)
    if kind == "bool":
        return sql.SQL("({d} ->> {k})::bool").format(d=doc, k=k)
    # json and list_string: the value's JSON text, parsed in Python (once per distinct value)
    return sql.SQL("({d} -> {k})::text").format(d=doc, k=k)


def _vector_bytes(plan: ExportPlan) -> sql.Composable:
    """The vector in pgvector's binary form, as bytea (so COPY needs no pgvector loader)."""
    return sql.SQL("{}_send(e.{})").format(
        sql.SQL(plan.space.storage), sql.Identifier(plan.space.column)
    )


_NULL_TIME = "'\\x8000000000000000'::bytea"
_FIXED = np.dtype(
    [("xmin", ">f8"), ("ymin", ">f8"), ("xmax", ">f8"), ("ymax", ">f8")]
    + [(c, ">i8") for c in DATETIME_COLUMNS]
)
# Kinds read from the row's JSON line (pyarrow's JSON reader builds their lists and
# structs); scalar kinds are fields of their own, which PostgreSQL extracts with ``->>``
# more cheaply than it quotes and joins them into the line (100k publish-style rows, three
# varying strings: ~0.1 s less backend CPU, the same on the client).
_JSON_LINE_KINDS = ("list_string", NESTED)
# COPY types of the extracted fields: strings as their UTF-8 bytes (no Python str per value)
_FIELD_TYPES = {**KIND_PG_TYPES, "string": "bytea"}


def _line_fields(plan: ExportPlan) -> list[tuple[str, sql.Composable, pa.DataType]]:
    """The item fields read from the row's JSON line, as ``(name in the line, jsonb SQL,
    Arrow type)``: every varying property and asset field of a ``_JSON_LINE_KINDS`` kind
    (pyarrow's JSON reader parses them all at once, in C++). Empty: the rows have no JSON
    line."""
    details = plan.details
    out: list[tuple[str, sql.Composable, pa.DataType]] = []
    for k, (name, _column, kind) in enumerate(plan.properties):
        if name in details.constants or kind not in _JSON_LINE_KINDS:
            continue
        doc = sql.SQL("(i.properties -> {})").format(sql.Literal(name))
        out.append((f"p{k}", doc, _arrow_type(plan, name, kind)))
    for j, (akey, fields) in enumerate(sorted(plan.assets.items())):
        constant = details.asset_constants.get(akey, {})
        for k, (fkey, kind) in enumerate(sorted(fields.items())):
            if fkey in constant or kind not in _JSON_LINE_KINDS:
                continue
            doc = sql.SQL("(i.assets -> {} -> {})").format(sql.Literal(akey), sql.Literal(fkey))
            out.append((f"a{j}_{k}", doc, KIND_TYPES[kind]))
    return out


def _arrow_type(plan: ExportPlan, name: str, kind: str) -> pa.DataType:
    return plan.details.types[name] if kind == NESTED else KIND_TYPES[kind]


def _select(plan: ExportPlan) -> tuple[sql.Composable, list[str]]:
    """The SELECT list and the PostgreSQL type of each column (for the binary COPY).

    The bbox and the three timestamps go as one fixed-width bytea per row (4 float8 and 3
    binary timestamptz: int8 µs since 2000-01-01, int8 minimum for NULL) read as a numpy
    record array; the links as their JSON text (parsed once per distinct set of links:
    items of one source scene share theirs); the varying property / asset fields as one
    JSON object per row (``null`` where a key is missing); ids, geometries and JSON lines
    as bytes (no Python str or float per value)."""
    if plan.request.columns == "minimal":
        return (
            sql.SQL("SELECT i.id, ST_AsBinary(i.geometry), i.datetime, ") + _vector_bytes(plan),
            ["text", "bytea", "int8", "bytea"],
        )
    b = "float8send(i.bbox[array_length(i.bbox, 1) / 2 + {}])"
    fixed = " || ".join(
        ["float8send(i.bbox[1])", "float8send(i.bbox[2])", b.format(1), b.format(2)]
        + [f"coalesce(timestamptz_send(i.{c}), {_NULL_TIME})" for c in DATETIME_COLUMNS]
    )
    line: list[sql.Composable] = []
    for k, (name, doc, _type) in enumerate(_line_fields(plan)):
        head = ("{" if k == 0 else ",") + f'"{name}":'
        value = sql.SQL("{}::text || coalesce({}::text, 'null')")
        line.append(value.format(sql.Literal(head), doc))
    cols: list[sql.Composable] = [
        sql.SQL("i.id, ST_AsBinary(i.geometry), " + fixed + ", i.links::text"),
        sql.SQL(" || ").join([*line, sql.SQL("'}'")]) if line else sql.SQL("NULL::bytea"),
        _vector_bytes(plan),
    ]
    types = ["bytea", "bytea", "bytea", "bytea", "bytea", "bytea"]
    props = sql.SQL("i.properties")
    details = plan.details
    for name, _column, kind in plan.properties:
        if name in details.constants or kind in _JSON_LINE_KINDS:
            continue  # a constant column, or read from the JSON line
        cols.append(_extract(props, name, kind))
        types.append(_FIELD_TYPES[kind])
    for akey, fields in sorted(plan.assets.items()):
        asset = sql.SQL("(i.assets -> {})").format(sql.Literal(akey))
        if akey not in details.assets_everywhere:
            cols.append(sql.SQL("jsonb_typeof({}) = 'object'").format(asset))
            types.append("bool")
        constant = details.asset_constants.get(akey, {})
        for fkey, kind in sorted(fields.items()):
            if fkey in constant or kind in _JSON_LINE_KINDS:
                continue
            cols.append(
                sql.SQL("CASE WHEN jsonb_typeof({a}) = 'object' THEN {v} END").format(
                    a=asset, v=_extract(asset, fkey, kind)
                )
            )
            types.append(_FIELD_TYPES[kind])
    return sql.SQL("SELECT ") + sql.SQL(", ").join(cols), types


def _read_lines(texts: Any, plan: ExportPlan) -> pa.Table:
    """The rows' JSON lines as one Arrow table (pyarrow's JSON reader, explicit schema)."""
    schema = pa.schema([(name, t) for name, _doc, t in _line_fields(plan)])
    data = b"\n".join(texts)
    # one block, no thread pool: the export's reader and builder threads are the
    # parallelism (the pool's hand-overs cost ~40 % more CPU per batch)
    return pajson.read_json(
        pa.BufferReader(data),
        read_options=pajson.ReadOptions(block_size=len(data) + 2, use_threads=False),
        parse_options=pajson.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"
        ),
    )


def _timestamps(values: Any) -> pa.Array:
    """Binary timestamptz values (int8 µs since 2000-01-01) as timestamp[us, UTC]."""
    raw = pa.array(values, pa.int64())
    return pc.add(raw, pa.scalar(PG_EPOCH_US, pa.int64())).cast(pa.timestamp("us", tz="UTC"))


def _fixed_columns(values: Any) -> tuple[pa.Array, list[pa.Array]]:
    """The bbox struct and the three timestamp columns from the rows' fixed-width fields."""
    rec = np.frombuffer(b"".join(values), _FIXED)
    bbox = pa.StructArray.from_arrays(
        [pa.array(rec[k].astype("<f8")) for k in ("xmin", "ymin", "xmax", "ymax")],
        fields=list(BBOX_TYPE),
    )
    times = []
    for c in DATETIME_COLUMNS:
        v = rec[c].astype("<i8")
        null = v == np.iinfo(np.int64).min
        arr = pa.array(v + PG_EPOCH_US, pa.int64(), mask=null if null.any() else None)
        times.append(arr.cast(pa.timestamp("us", tz="UTC")))
    return bbox, times


def _served(href: pa.Array) -> pa.Array:
    out = pa.array(np.zeros(len(href), bool))
    for prefix in SERVED_PREFIXES:
        out = pc.or_(out, pc.fill_null(pc.starts_with(href, prefix), False))
    return out


def _abs_array(href: pa.Array, base: str | None) -> pa.Array:
    """Root-relative hrefs of what the API serves made absolute (as catalog.stac does)."""
    if not base:
        return href
    return pc.if_else(_served(href), pc.binary_join_element_wise(base, href, ""), href)


def _links_column(texts: Any, base: str | None) -> pa.Array:
    """The ``links`` column from the rows' links as JSON text: each distinct text parsed and
    fixed (``_links``) once, then taken for every row that has it."""
    codes = pa.array(texts, pa.binary()).dictionary_encode()
    distinct = codes.dictionary.to_pylist()
    data = b"\n".join(b'{"l":' + t + b"}" for t in distinct)
    parsed = pajson.read_json(
        pa.BufferReader(data),
        read_options=pajson.ReadOptions(block_size=len(data) + 2, use_threads=False),
        parse_options=pajson.ParseOptions(explicit_schema=pa.schema([("l", pa.list_(LINK_TYPE))])),
    )
    return _links(parsed.column("l").combine_chunks(), base).take(codes.indices)


def _links(lists: pa.Array, base: str | None) -> pa.Array:
    """The ``links`` column from parsed links, generated rels dropped and hrefs made
    absolute column-wise; only a source path stored before migration 0013 (no URI yet)
    goes through Python."""
    n = len(lists)
    flat, parents = lists.flatten(), pc.list_parent_indices(lists)
    keep = pc.invert(
        pc.fill_null(pc.is_in(flat.field("rel"), pa.array(sorted(GENERATED_RELS))), False)
    )
    if not pc.all(keep).as_py():
        flat, parents = flat.filter(keep), parents.filter(keep)
    rel, href, typ, title = flat.flatten()
    served = _served(href)
    source = pc.fill_null(pc.is_in(rel, pa.array(sorted(SOURCE_RELS))), False)
    uri = pc.and_(
        pc.match_substring_regex(href, URI_SCHEME),
        pc.invert(pc.match_substring_regex(href, DRIVE_PATH)),
    )
    fix = np.flatnonzero(
        pc.and_(pc.and_(source, pc.invert(served)), pc.invert(pc.fill_null(uri, True))).to_numpy(
            zero_copy_only=False
        )
    )
    if len(fix):
        values = href.to_pylist()
        for k in fix:  # a path stored before migration 0013
            values[k] = source_uri(values[k]) or values[k]
        href = pa.array(values, pa.string())
    counts = np.bincount(parents.to_numpy(), minlength=n)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.StructArray.from_arrays(
            [rel, _abs_array(href, base), typ, title], fields=list(LINK_TYPE)
        ),
    )


def _column(values: Any, kind: str, base: str | None = None, href: bool = False) -> pa.Array:
    if kind in ("json", "list_string"):
        # values of one property often repeat (template fields): dictionary-encode the JSON
        # texts in Arrow and parse / re-serialise each distinct one once
        codes = pa.array(values, pa.string()).dictionary_encode()
        convert = _json_text if kind == "json" else _json_list
        uniques = [convert(v) for v in codes.dictionary.to_pylist()]
        return pa.array(uniques, KIND_TYPES[kind]).take(codes.indices)
    arr = pa.array(values, KIND_TYPES[kind])
    return _abs_array(arr, base) if href and kind == "string" else arr


def _constant(
    value: Any, kind: str, n: int, base: str | None = None, href: bool = False, t: Any = None
) -> pa.Array:
    """A column of ``n`` times one JSON value (a field constant over the collection), built
    as the per-row column of that value would be."""
    if value is None:
        return pa.nulls(n, t or KIND_TYPES[kind])
    if kind == NESTED:
        one = pa.array([value], t)
    else:
        raw = orjson.dumps(value).decode() if kind in ("json", "list_string") else value
        one = _column([raw], kind, base, href)
    return one.take(pa.array(np.zeros(n, np.int32)))


def _line_column(lines: pa.Table | None, name: str, base: str | None, href: bool) -> pa.Array:
    assert lines is not None  # a field of the JSON line: the rows have one
    col = lines.column(name).combine_chunks()
    return _abs_array(col, base) if href and pa.types.is_string(col.type) else col


def _batch_table(plan: ExportPlan, rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    req = plan.request
    cols = list(zip(*rows, strict=True))
    if req.columns == "minimal":
        return pa.RecordBatch.from_arrays(
            [
                pa.array(cols[0], pa.string()),
                pa.array(cols[1], pa.binary()),
                _timestamps(cols[2]),
                _embedding_array(cols[3], plan),
            ],
            schema=plan.schema,
        )
    base = req.base_url.rstrip("/") if req.base_url else None
    n = len(rows)
    exts = extensions(plan)
    lines = _read_lines(cols[4], plan) if _line_fields(plan) else None
    bbox, times = _fixed_columns(cols[2])
    arrays: list[pa.Array] = [
        pa.array(["Feature"] * n, pa.string()),
        pa.array([stac_version_for(exts)] * n, pa.string()),
        pa.array([exts] * n, pa.list_(pa.string())),
        pa.array(cols[0], pa.binary()).cast(pa.string()),
        pa.array(cols[1], pa.binary()),
        bbox,
        pa.array([req.collection_id] * n, pa.string()),
        _links_column(cols[3], base),
    ]
    at = 6
    prop_arrays = []
    details = plan.details
    for k, (name, _column_name, kind) in enumerate(plan.properties):
        if name in details.constants:
            key = (f"p{k}", n)
            if key not in plan.constant_columns:
                t = _arrow_type(plan, name, kind)
                plan.constant_columns[key] = _constant(details.constants[name], kind, n, t=t)
            prop_arrays.append(plan.constant_columns[key])
        elif kind in _JSON_LINE_KINDS:
            prop_arrays.append(_line_column(lines, f"p{k}", None, False))
        else:
            prop_arrays.append(_column(cols[at], kind))
            at += 1
    if plan.assets:
        structs = []
        for j, (akey, fields) in enumerate(sorted(plan.assets.items())):
            mask = None
            if akey not in details.assets_everywhere:
                mask = pc.invert(pc.fill_null(pa.array(cols[at], pa.bool_()), False))
                at += 1
            constant = details.asset_constants.get(akey, {})
            children = []
            for k, (fkey, kind) in enumerate(sorted(fields.items())):
                href = fkey == "href"
                if fkey in constant:
                    key = (f"a{j}_{k}", n)
                    if key not in plan.constant_columns:
                        value = _constant(constant[fkey], kind, n, base, href)
                        plan.constant_columns[key] = value
                    children.append(plan.constant_columns[key])
                elif kind in _JSON_LINE_KINDS:
                    children.append(_line_column(lines, f"a{j}_{k}", base, href))
                else:
                    children.append(_column(cols[at], kind, base, href=href))
                    at += 1
            structs.append(
                pa.StructArray.from_arrays(children, fields=list(asset_type(fields)), mask=mask)
            )
        arrays.append(
            pa.StructArray.from_arrays(structs, fields=list(plan.schema.field("assets").type))
        )
    arrays += times
    arrays += prop_arrays
    arrays.append(_embedding_array(cols[5], plan))
    return pa.RecordBatch.from_arrays(arrays, schema=plan.schema)
