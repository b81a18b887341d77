"""Compact dtypes for exchanged vectors: float32, float16, int8 (scalar) and binary.

Formulas (documented in docs/exchange.md, recorded in every export as ``emb:quantization``):

- ``float16``: IEEE half precision, round to nearest (exact for ``halfvec`` spaces).
- ``int8``: per dimension ``d`` with ``offset[d] = (max[d] + min[d]) / 2`` and
  ``scale[d] = (max[d] - min[d]) / 254`` (1 where max == min):
  ``q = clip(round((x - offset) / scale), -127, 127)``; dequantised ``x' = q * scale + offset``.
- ``binary``: one bit per dimension, ``1`` where ``x > 0``, packed most significant bit first
  (``numpy.packbits(..., bitorder="big")``) into ``ceil(D / 8)`` bytes; the last byte is
  padded with zero bits. Dequantised to ``+1 / -1``.

Vector layouts (``embedding`` column of an export, named in its ``embeddings`` metadata):

- ``bytes`` (default): ``fixed_size_binary[W]``, one value per row holding the vector's
  ``D`` values in the dtype, little-endian (``W`` = 4D, 2D, D bytes; binary: ceil(D/8)).
  Decode: ``numpy.frombuffer(column.buffers()[1], "<f2").reshape(-1, D)`` (``"<f4"``,
  ``"i1"``). Parquet writes one fixed-length value per row: no repetition or definition
  levels per dimension, which is what made the list layout the slowest step of an export.
- ``list``: ``fixed_size_list<float32|float16|int8>[D]``, for readers that want native
  arrays (DuckDB ``FLOAT[]``); binary stays ``fixed_size_binary[ceil(D/8)]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from embcat.catalog.errors import InvalidInput

Dtype = Literal["float32", "float16", "int8", "binary"]
DTYPES: tuple[str, ...] = ("float32", "float16", "int8", "binary")
LOSSLESS_FOR = {"float32": {"vector", "halfvec"}, "float16": {"halfvec"}}
INT8_LEVELS = 127
LAYOUTS: tuple[str, ...] = ("bytes", "list")
NUMPY_DTYPES = {"float32": "<f4", "float16": "<f2", "int8": "i1", "binary": "u1"}


def check_dtype(dtype: str) -> Dtype:
    if dtype not in DTYPES:
        raise InvalidInput(f"unknown dtype {dtype!r}; use one of {list(DTYPES)}")
    return dtype  # type: ignore[return-value]


def bytes_per_vector(dtype: str, dims: int) -> int:
    """Payload bytes of one vector of ``dims`` values in ``dtype``."""
    check_dtype(dtype)
    return {"float32": 4 * dims, "float16": 2 * dims, "int8": dims, "binary": -(-dims // 8)}[dtype]


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise InvalidInput(f"unknown vector_layout {layout!r}; use one of {list(LAYOUTS)}")
    return layout


def arrow_type(dtype: str, dims: int, layout: str = "bytes") -> pa.DataType:
    """Arrow type of the ``embedding`` column for ``dtype`` in ``layout``."""
    check_dtype(dtype)
    check_layout(layout)
    if dtype == "binary":
        return pa.binary(-(-dims // 8))
    if layout == "bytes":
        return pa.binary(bytes_per_vector(dtype, dims))
    value = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8()}[dtype]
    return pa.list_(value, dims)


@dataclass
class RangeStats:
    """Running per-dimension minimum and maximum (one pass, memory O(D))."""

    dims: int
    low: np.ndarray = field(init=False)
    high: np.ndarray = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.low = np.full(self.dims, np.inf, dtype=np.float64)
        self.high = np.full(self.dims, -np.inf, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        self.low = np.minimum(self.low, values.min(axis=0))
        self.high = np.maximum(self.high, values.max(axis=0))
        self.count += len(values)


@dataclass(frozen=True)
class Quantization:
    """Parameters of a lossy dtype; ``as_stac()`` is the ``emb:quantization`` object."""

    method: str
    original_dtype: str
    quantized_dtype: str
    scale: tuple[float, ...] = ()
    offset: tuple[float, ...] = ()

    def as_stac(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "original_dtype": self.original_dtype,
            "quantized_dtype": self.quantized_dtype,
        }
        if self.scale:
            out["scale"] = list(self.scale)
            out["offset"] = list(self.offset)
        return out

    @classmethod
    def from_stac(cls, obj: dict[str, Any]) -> Quantization:
        return cls(
            method=obj["method"],
            original_dtype=obj["original_dtype"],
            quantized_dtype=obj["quantized_dtype"],
            scale=tuple(float(v) for v in obj.get("scale", ())),
            offset=tuple(float(v) for v in obj.get("offset", ())),
        )


def int8_quantization(stats: RangeStats) -> Quantization:
    """Scale and offset that map each dimension's [min, max] onto [-127, 127]."""
    if stats.count == 0:
        low = np.zeros(stats.dims)
        high = np.zeros(stats.dims)
    else:
        low, high = stats.low, stats.high
    offset = ((high + low) / 2).astype(np.float32)
    span = (high - low).astype(np.float32)
    scale = np.where(span > 0, span / (2 * INT8_LEVELS), 1.0).astype(np.float32)
    return Quantization(
        method="scalar",
        original_dtype="float32",
        quantized_dtype="int8",
        scale=tuple(float(v) for v in scale),
        offset=tuple(float(v) for v in offset),
    )


BINARY_QUANTIZATION = Quantization(
    method="binary", original_dtype="float32", quantized_dtype="binary"
)


def quantize(values: np.ndarray, dtype: str, quant: Quantization | None = None) -> np.ndarray:
    """``(n, D)`` float32 values in ``dtype`` as a numpy array (binary: ``(n, ceil(D/8))`` u8)."""
    check_dtype(dtype)
    values = np.asarray(values, dtype=np.float32)
    if dtype == "float32":
        return values
    if dtype == "float16":
        return values.astype(np.float16)
    if dtype == "binary":
        return np.packbits(values > 0, axis=1, bitorder="big")
    if quant is None or not quant.scale:
        raise InvalidInput("int8 needs a quantization with per-dimension scale and offset")
    scale = np.asarray(quant.scale, dtype=np.float32)
    offset = np.asarray(quant.offset, dtype=np.float32)
    q = values - offset  # one temporary; the rest in place
    np.divide(q, scale, out=q)
    np.rint(q, out=q)
    np.clip(q, -INT8_LEVELS, INT8_LEVELS, out=q)
    return q.astype(np.int8)


def dequantize(
    data: np.ndarray, dtype: str, dims: int, quant: Quantization | None = None
) -> np.ndarray:
    """Back to ``(n, D)`` float32 (lossy for int8 and binary)."""
    check_dtype(dtype)
    if dtype in ("float32", "float16"):
        return np.asarray(data, dtype=np.float32).reshape(-1, dims)
    if dtype == "binary":
        bits = np.unpackbits(np.asarray(data, dtype=np.uint8), axis=1, bitorder="big")
        return np.where(bits[:, :dims] > 0, 1.0, -1.0).astype(np.float32)
    if quant is None or not quant.scale:
        raise InvalidInput("int8 needs a quantization with per-dimension scale and offset")
    scale = np.asarray(quant.scale, dtype=np.float32)
    offset = np.asarray(quant.offset, dtype=np.float32)
    return np.asarray(data, dtype=np.float32).reshape(-1, dims) * scale + offset


def to_arrow(
    values: np.ndarray, dtype: str, quant: Quantization | None = None, layout: str = "bytes"
) -> pa.Array:
    """The ``embedding`` column for ``(n, D)`` float32 ``values``."""
    return array_of(quantize(values, dtype, quant), dtype, values.shape[1], layout)


def array_of(data: np.ndarray, dtype: str, dims: int, layout: str = "bytes") -> pa.Array:
    """The ``embedding`` column holding ``data`` (``(n, D)`` values already in ``dtype``;
    binary: ``(n, ceil(D/8))`` packed bytes), without copying it where it is contiguous."""
    data = np.ascontiguousarray(data, dtype=NUMPY_DTYPES[dtype])
    typ = arrow_type(dtype, dims, layout)
    if pa.types.is_fixed_size_binary(typ):
        return pa.FixedSizeBinaryArray.from_buffers(typ, len(data), [None, pa.py_buffer(data)])
    return pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1)), dims)


def from_arrow(
    column: pa.Array | pa.ChunkedArray, dtype: str, dims: int, quant: Quantization | None = None
) -> np.ndarray:
    """``(n, D)`` float32 values of an ``embedding`` column (dequantised where lossy), in
    either layout (``fixed_size_binary`` or a list of values)."""
    return dequantize(values_of(column, dtype, dims), dtype, dims, quant)


def values_of(column: pa.Array | pa.ChunkedArray, dtype: str, dims: int) -> np.ndarray:
    """The column's values in ``dtype`` as ``(n, D)`` (binary: ``(n, ceil(D/8))`` bytes)."""
    check_dtype(dtype)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if pa.types.is_fixed_size_binary(column.type):
        width = column.type.byte_width
        item = np.dtype(NUMPY_DTYPES[dtype])
        per_row = -(-dims // 8) if dtype == "binary" else dims
        if width != per_row * item.itemsize:
            raise InvalidInput(
                f"embedding values of {width} bytes are not {per_row} {dtype} values"
            )
        buf = column.buffers()[1]
        raw = np.frombuffer(buf, dtype=np.uint8, count=(column.offset + n) * width)
        return raw[column.offset * width :].view(item).reshape(n, per_row)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(n, dims)
