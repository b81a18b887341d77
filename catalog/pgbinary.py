"""PostgreSQL's binary formats as embcat writes and reads them, in one place.

* COPY BINARY framing: the file header and trailer, a row's field count, a field's 4-byte
  length (-1: NULL), ``jsonb`` fields (version byte 1, then the JSON text), ``timestamptz``
  (int8 microseconds since 2000-01-01), one-dimensional ``float8[]`` (the bboxes).
* pgvector's binary values (``vector_send`` / ``vector_recv`` and the ``halfvec`` and
  ``bit`` counterparts):

  - ``vector``:  int2 dimensions, int2 unused (0), D big-endian float4;
  - ``halfvec``: int2 dimensions, int2 unused (0), D big-endian float2;
  - ``bit``:     int4 length in bits, ceil(D / 8) bytes, most significant bit first.

Publish, the mirror's writer and the export read and write vectors through these functions;
columns are built with Arrow kernels (a constant or fixed-width record array per field), so
no Python object is made per row. ``tests/catalog/test_pgbinary.py`` round-trips each
format through the server.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
NULL_FIELD = struct.pack(">i", -1)
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970

BIN = pa.binary()
JSONB_V1 = pa.scalar(b"\x01", BIN)  # binary jsonb: format version 1, then the text


# -- COPY BINARY framing (Arrow columns of row parts) ------------------------------------------


def const(value: bytes) -> pa.Scalar:
    """A constant part of every row."""
    return pa.scalar(value, BIN)


def field_count(fields: int) -> pa.Scalar:
    """The int2 field count that opens each row."""
    return const(struct.pack(">h", fields))


def fixed(data: bytes, width: int, n: int) -> pa.Array:
    """``n`` values of ``width`` bytes each (taken from ``data``) as a binary array."""
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(data)])
    return arr.cast(BIN)


def field_lengths(values: pa.Array, extra: int = 0) -> pa.Array:
    """The 4-byte big-endian COPY field header (byte length + ``extra``) of each value."""
    lengths = pc.binary_length(values).to_numpy(zero_copy_only=False) + extra
    return fixed(lengths.astype(">i4").tobytes(), 4, len(values))


def jsonb_fields(text: pa.Array) -> list[pa.Array]:
    """The parts of ``jsonb`` fields (COPY header, version byte, JSON text) of each text."""
    return [field_lengths(text, extra=1), JSONB_V1, text]


def rows_buffer(rows: pa.Array) -> memoryview:
    """The bytes of a binary array of joined rows, as one contiguous buffer (no copy)."""
    offsets = np.frombuffer(
        rows.buffers()[1], dtype=np.int32, count=len(rows) + 1, offset=4 * rows.offset
    )
    return memoryview(rows.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def timestamp_values(us: np.ndarray) -> np.ndarray:
    """``timestamptz`` binary values (int8, 2000-01-01 epoch) of microseconds since 1970."""
    return np.asarray(us, dtype=np.int64) - PG_EPOCH_US


def timestamp_column(us: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """The ``timestamptz`` COPY fields (length header included) of microseconds since
    1970; NULL where ``valid`` (a boolean mask) is False."""
    rec = np.dtype([("l", ">i4"), ("t", ">i8")])
    out = np.empty(len(us), rec)
    out["l"], out["t"] = 8, timestamp_values(us)
    fields = fixed(out.tobytes(), rec.itemsize, len(us))
    if valid is None or bool(np.all(valid)):
        return fields
    return pc.if_else(pa.array(np.asarray(valid, dtype=bool)), fields, const(NULL_FIELD))


FLOAT8_OID = 701


def float8_array_column(values: np.ndarray) -> pa.Array:
    """One-dimensional ``float8[]`` COPY fields (length header included, no NULL elements)
    of the rows of an ``(n, k)`` array, as one record array: no Python object per value."""
    n, k = values.shape
    value = np.dtype([("l", ">i4"), ("x", ">f8")])
    rec = np.dtype([("l", ">i4"), ("nd", ">i4"), ("nul", ">i4"), ("oid", ">i4"),
                    ("dim", ">i4"), ("lb", ">i4"), ("v", value, (k,))])  # fmt: skip
    out = np.zeros(n, rec)
    out["l"], out["nd"], out["oid"], out["dim"], out["lb"] = 20 + 12 * k, 1, FLOAT8_OID, k, 1
    out["v"]["l"] = 8
    out["v"]["x"] = values
    return fixed(out.tobytes(), rec.itemsize, n)


def float8_arrays(rows: list[list[float]]) -> pa.Array:
    """``float8_array_column`` of rows of any lengths (the record array where all share one)."""
    if len({len(r) for r in rows}) == 1:
        return float8_array_column(np.asarray(rows, dtype=np.float64))
    parts = []
    for r in rows:
        body = struct.pack(">iiiii", 1, 0, FLOAT8_OID, len(r), 1) + b"".join(
            struct.pack(">id", 8, float(v)) for v in r
        )
        parts.append(struct.pack(">i", len(body)) + body)
    return pa.array(parts, BIN)


# -- pgvector ----------------------------------------------------------------------------------


def value_width(storage: str) -> int:
    """Bytes per dimension of a ``halfvec`` (2) or ``vector`` (4) value."""
    return 2 if storage == "halfvec" else 4


def value_size(dims: int, storage: str) -> int:
    """Bytes of one ``halfvec``/``vector`` binary value (its 4-byte header included)."""
    return 4 + value_width(storage) * dims


def vector_fields(dims: int, storage: str, prefix: str = "e") -> list[tuple]:
    """numpy record fields of one ``halfvec``/``vector`` COPY field: its int4 length, then
    the value (int2 dimensions, int2 unused, D big-endian floats). Names start with
    ``prefix`` so that a record may hold other fields too."""
    value = ">f2" if storage == "halfvec" else ">f4"
    return [
        (f"l_{prefix}", ">i4"),
        (f"{prefix}_dim", ">u2"),
        (f"{prefix}_unused", ">u2"),
        (prefix, value, (dims,)),
    ]


def fill_vectors(records: np.ndarray, values: np.ndarray, storage: str, prefix: str = "e") -> None:
    """Write ``(n, D)`` ``values`` into the ``vector_fields`` of ``records`` (cast to the
    stored big-endian float16/float32)."""
    dims = records.dtype[prefix].shape[0]
    records[f"l_{prefix}"] = value_size(dims, storage)
    records[f"{prefix}_dim"] = dims
    records[f"{prefix}_unused"] = 0
    records[prefix] = values


def vector_column(values: np.ndarray, storage: str) -> pa.Array:
    """The ``halfvec``/``vector`` COPY fields (length header included) of ``(n, D)`` values,
    as one binary array."""
    n, dims = values.shape
    rec = np.dtype(vector_fields(dims, storage))
    out = np.empty(n, rec)
    fill_vectors(out, values, storage)
    return fixed(out.tobytes(), rec.itemsize, n)


def encode_vector(values: np.ndarray, storage: str) -> bytes:
    """One ``halfvec``/``vector`` binary value (what ``halfvec_send`` returns)."""
    arr = np.asarray(values).reshape(-1)
    dt = ">f2" if storage == "halfvec" else ">f4"
    return struct.pack(">HH", arr.size, 0) + arr.astype(dt).tobytes()


def value_dtype(dims: int, storage: str) -> np.dtype:
    """numpy record of one ``halfvec``/``vector`` binary value (no COPY length)."""
    value = ">f2" if storage == "halfvec" else ">f4"
    return np.dtype([("hdr", ">u4"), ("v", value, (dims,))])


def copy_row_dtype(dims: int, storage: str) -> np.dtype:
    """numpy record of one row of ``COPY (SELECT <vector>) TO STDOUT (FORMAT BINARY)``:
    int2 field count (1), int4 field length, the ``halfvec``/``vector`` value."""
    return np.dtype([("fields", ">i2"), ("size", ">i4"), *value_dtype(dims, storage).descr])


def decode_vectors(data: bytes, dims: int, storage: str, *, stored: bool = False) -> np.ndarray:
    """``(n, D)`` values from concatenated ``halfvec``/``vector`` binary values, in one
    vectorised step: float32, or with ``stored`` the stored type (float16 of halfvec) in
    native byte order, without a conversion. ValueError if a header is not ``dims``."""
    arr = np.frombuffer(data, dtype=value_dtype(dims, storage))
    if np.any((arr["hdr"] >> 16) != dims) or np.any(arr["hdr"] & 0xFFFF):
        raise ValueError(f"not {dims}-d {storage} values")
    if stored:
        return arr["v"].astype(f"<f{value_width(storage)}")
    return arr["v"].astype(np.float32)


def encode_bits(bits: np.ndarray) -> bytes:
    """One ``bit(D)`` binary value of a 1-D boolean array (what ``bit_send`` returns)."""
    flags = np.asarray(bits, dtype=bool).reshape(-1)
    return struct.pack(">i", flags.size) + np.packbits(flags, bitorder="big").tobytes()


def decode_bits(data: bytes) -> np.ndarray:
    """The boolean array of one ``bit(D)`` binary value."""
    (length,) = struct.unpack(">i", data[:4])
    bits = np.unpackbits(np.frombuffer(data[4:], dtype=np.uint8), bitorder="big")
    return bits[:length].astype(bool)
