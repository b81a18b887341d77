"""The item shape of an export: which property columns and asset struct fields it has,
their kinds, the fields constant over the collection, and the Arrow types of the nested
ones (issue 18).

Found by one discovery pass over the collection's jsonb documents (hash aggregates per key
and JSON type) and kept in ``export_shapes`` with the collection's highest ``change_seq``,
so the next exports skip the pass while nothing was written since.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pyarrow.json as pajson
from psycopg import sql

from embcat.catalog.exchange_format import (
    DATETIME_COLUMNS,
    NESTED,
    RESERVED,
    type_from_text,
    type_to_text,
)
from embcat.catalog.store import export_reads, item_reads

NESTED_CHUNK = 10_000  # distinct values of a property inferred at a time (memory bound)


@dataclass
class ShapeDetails:
    """What the shape knows beyond the columns' kinds: the item fields with one value over
    the whole collection (written as constant columns, not extracted per row; JSON values),
    the asset keys present as an object in every item, and the Arrow type of each property
    of the ``nested`` kind."""

    constants: dict[str, Any] = field(default_factory=dict)  # property name -> value
    asset_constants: dict[str, dict[str, Any]] = field(default_factory=dict)
    assets_everywhere: list[str] = field(default_factory=list)
    types: dict[str, pa.DataType] = field(default_factory=dict)  # nested property -> type

    def as_json(self) -> dict[str, Any]:
        return {
            "properties": self.constants,
            "assets": self.asset_constants,
            "assets_everywhere": self.assets_everywhere,
            "types": {k: type_to_text(t) for k, t in self.types.items()},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> ShapeDetails:
        doc = doc or {}
        return cls(
            constants=dict(doc.get("properties") or {}),
            asset_constants={k: dict(v) for k, v in (doc.get("assets") or {}).items()},
            assets_everywhere=list(doc.get("assets_everywhere") or []),
            types={k: type_from_text(v) for k, v in (doc.get("types") or {}).items()},
        )


def _kind(types: list[str], integral: bool, str_arrays: bool) -> str:
    kinds = {t for t in types if t != "null"}
    if kinds == {"string"}:
        return "string"
    if kinds == {"number"}:
        return "int64" if integral else "float64"
    if kinds == {"boolean"}:
        return "bool"
    if kinds == {"array"} and str_arrays:
        return "list_string"
    return "json"


def _kinds(
    rows: list[tuple[Any, ...]], total: int | dict[tuple[str, ...], int]
) -> dict[tuple[str, ...], tuple[str, Any]]:
    """Kind per key from ``(*key, jsonb type, integral, string arrays, count, min, max)``
    groups, with the key's one value (``_NOT_CONSTANT`` where there is none): a key is
    constant when it is present in every one of the ``total`` rows (per key, or of its
    parent key) with one JSON type and min == max of its canonical jsonb text."""
    seen: dict[tuple[str, ...], tuple[list[str], bool, bool, int, Any]] = {}
    for *key, typ, integral, str_arrays, count, low, high in rows:
        k = tuple(key)
        types, ok_int, ok_arr, _n, _v = seen.get(k, ([], True, True, 0, None))
        const = low if low == high and not types else _NOT_CONSTANT
        seen[k] = ([*types, typ], ok_int and bool(integral), ok_arr and bool(str_arrays),
                   int(count), const)  # fmt: skip
    out: dict[tuple[str, ...], tuple[str, Any]] = {}
    for k, (t, i, a, count, const) in seen.items():  # in the database's order
        want = total if isinstance(total, int) else total.get(k[:-1], -1)
        if len(t) != 1 or count != want or const is _NOT_CONSTANT:
            value = _NOT_CONSTANT
        else:
            value = orjson.loads(const)
        out[k] = (_kind(t, i, a), value)
    return out


_NOT_CONSTANT = object()


def _discover(
    conn: psycopg.Connection, where: sql.Composable
) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, str]], ShapeDetails]:
    """Property columns and asset struct fields with their kinds, from the rows exported,
    and the fields with one value in every row (constant columns).

    One hash aggregate per (key, JSON type): no DISTINCT sort of every value.
    """
    total = export_reads.count_items(conn, where)
    present = {(k,): n for k, n in export_reads.assets_present(conn, where).items()}
    details = ShapeDetails(assets_everywhere=sorted(k for (k,), n in present.items() if n == total))
    properties: list[tuple[str, str, str]] = []
    prop_rows = export_reads.property_kinds(conn, where)
    structured = _structured_keys(prop_rows)
    for (key,), (kind, value) in _kinds(prop_rows, total).items():
        if key in DATETIME_COLUMNS:
            continue
        column = f"properties.{key}" if key in RESERVED else key
        if kind == "json" and key in structured:
            # a constant's one value is all there is to read (no pass over the rows)
            constant = value is not _NOT_CONSTANT
            nested = _infer([orjson.dumps(value).decode()]) if constant else None
            if not constant:
                nested = _nested_type(conn, where, key)
            if nested is not None:
                kind = NESTED
                details.types[key] = nested
        properties.append((key, column, kind))
        if value is not _NOT_CONSTANT:
            details.constants[key] = value
    assets: dict[str, dict[str, str]] = {}
    for (akey, fkey), (kind, value) in _kinds(
        export_reads.asset_field_kinds(conn, where),
        {k: total for k in present if present[k] == total},
    ).items():
        assets.setdefault(akey, {})[fkey] = kind
        if value is not _NOT_CONSTANT:
            details.asset_constants.setdefault(akey, {})[fkey] = value
    return properties, assets, details


def _known_shape(
    conn: psycopg.Connection, collection_id: str
) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, str]], ShapeDetails] | None:
    """The shape kept by an earlier export, while no item was written since (else None)."""
    row = export_reads.known_shape(conn, collection_id)
    if row is None:
        return None
    props = [(p["name"], p["column"], p["kind"]) for p in row[0]]
    return props, dict(row[1]), ShapeDetails.from_json(row[2])


def keep_shape(
    conn: psycopg.Connection,
    collection_id: str,
    properties: list[tuple[str, str, str]],
    assets: dict[str, dict[str, str]],
    details: ShapeDetails,
) -> None:
    """Best-effort: a read-only database or role simply rediscovers next time."""
    seq = item_reads.last_change(conn, collection_id)
    try:
        with conn.transaction():
            export_reads.keep_shape(
                conn,
                collection_id,
                seq,
                [{"name": n, "column": c, "kind": k} for n, c, k in properties],
                assets,
                details.as_json(),
            )
    except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege):
        pass


def item_shape(
    conn: psycopg.Connection,
    collection_id: str,
    columns: str,
    searched: bool,
    part: sql.Composable,
) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, str]], ShapeDetails, bool]:
    """Item columns of an export: none for ``minimal``; for ``full`` the collection's kept
    shape when still valid, else a discovery pass (over the whole collection when the
    request has no search, and kept for the next export; over the rows exported otherwise).
    """
    if columns == "minimal":
        return [], {}, ShapeDetails(), False
    if searched:
        return (*_discover(conn, part), False)
    known = _known_shape(conn, collection_id)
    if known is not None:
        return (*known, False)
    whole = sql.SQL("i.collection_id = {}").format(sql.Literal(collection_id))
    return (*_discover(conn, whole), True)


def _structured_keys(rows: list[tuple[Any, ...]]) -> set[str]:
    """Keys whose values are all objects, or all arrays (nulls aside)."""
    types: dict[str, set[str]] = {}
    for key, typ, *_rest in rows:
        types.setdefault(key, set()).add(typ)
    return {k for k, t in types.items() if len(t - {"null"}) == 1 and t & {"object", "array"}}


def _writable(t: pa.DataType) -> bool:
    """A type Parquet holds and that says what each value was (no empty struct, no null)."""
    if pa.types.is_null(t):
        return False
    if pa.types.is_struct(t):
        return t.num_fields > 0 and all(_writable(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _writable(t.value_type)
    return True


def _as_text_times(t: pa.DataType) -> pa.DataType:
    """``t`` with the timestamps pyarrow infers from ISO strings turned back into strings."""
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([(f.name, _as_text_times(f.type)) for f in t])
    if pa.types.is_list(t):
        return pa.list_(_as_text_times(t.value_type))
    return t


def _read_values(lines: bytes, schema: pa.Schema | None = None) -> pa.ChunkedArray:
    table = pajson.read_json(
        pa.BufferReader(lines),
        read_options=pajson.ReadOptions(block_size=len(lines) + 1),
        parse_options=pajson.ParseOptions(explicit_schema=schema),
    )
    return table.column("v")


def _infer(texts: list[str]) -> pa.DataType | None:
    """The Arrow type pyarrow's JSON reader gives these JSON values (strings kept as
    strings), if every value reads back as it was (same keys in each object, no empty
    object, one type per position); else None (the property stays JSON text)."""
    lines = b"\n".join(b'{"v":' + t.encode() + b"}" for t in texts)
    try:
        inferred = _as_text_times(_read_values(lines).type)
        if not _writable(inferred):
            return None
        col = _read_values(lines, pa.schema([("v", inferred)]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if col.to_pylist() != [orjson.loads(t) for t in texts]:
        return None
    return inferred


def _nested_type(conn: psycopg.Connection, where: sql.Composable, key: str) -> pa.DataType | None:
    """The one Arrow type of a property's object / array values, from its distinct values
    (read ``NESTED_CHUNK`` at a time: memory bounded by the chunk, not by the values)."""
    query = export_reads.distinct_values(where, key)
    found: pa.DataType | None = None
    with conn.cursor(name="embcat_export_nested") as cur:
        cur.execute(query)
        while rows := cur.fetchmany(NESTED_CHUNK):
            t = _infer([r[0] for r in rows])
            if t is None or (found is not None and t != found):
                return None
            found = t
    return found
