"""Compact dtypes: encode to Arrow and back, with the documented error bounds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from embcat.catalog.errors import InvalidInput
from embcat.catalog.quantize import (
    BINARY_QUANTIZATION,
    Quantization,
    RangeStats,
    arrow_type,
    bytes_per_vector,
    from_arrow,
    int8_quantization,
    to_arrow,
)


@pytest.fixture
def values() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((50, 13)).astype(np.float32)


@pytest.mark.parametrize("layout", ["bytes", "list"])
def test_float32_round_trip_is_exact(values: np.ndarray, layout: str) -> None:
    col = to_arrow(values, "float32", layout=layout)
    assert col.type == arrow_type("float32", 13, layout)
    assert np.array_equal(from_arrow(col, "float32", 13), values)


@pytest.mark.parametrize(
    ("layout", "arrow"), [("bytes", pa.binary(26)), ("list", pa.list_(pa.float16(), 13))]
)
def test_float16_round_trip_equals_half_rounding(
    values: np.ndarray, layout: str, arrow: pa.DataType
) -> None:
    col = to_arrow(values, "float16", layout=layout)
    assert col.type == arrow
    assert np.array_equal(
        from_arrow(col.slice(3), "float16", 13), values[3:].astype(np.float16).astype(np.float32)
    )


def test_bytes_layout_is_the_little_endian_values(values: np.ndarray) -> None:
    col = to_arrow(values, "float16")
    assert col[4].as_py() == values[4].astype("<f2").tobytes()


def test_bytes_of_another_width_are_refused(values: np.ndarray) -> None:
    col = to_arrow(values, "float16")
    with pytest.raises(InvalidInput, match="26 bytes are not 13 float32"):
        from_arrow(col, "float32", 13)


def test_unknown_layout_is_refused() -> None:
    with pytest.raises(InvalidInput, match="vector_layout"):
        arrow_type("float16", 13, "tensor")


def test_int8_error_is_at_most_half_a_step(values: np.ndarray) -> None:
    stats = RangeStats(13)
    stats.update(values[:20])
    stats.update(values[20:])
    quant = int8_quantization(stats)
    col = to_arrow(values, "int8", quant)
    assert col.type == pa.binary(13)
    back = from_arrow(col, "int8", 13, quant)
    step = np.asarray(quant.scale)
    assert np.all(np.abs(back - values) <= step / 2 + 1e-6)
    assert Quantization.from_stac(quant.as_stac()) == quant


def test_int8_without_parameters_is_refused(values: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="scale and offset"):
        to_arrow(values, "int8")


def test_binary_keeps_the_sign_bits(values: np.ndarray) -> None:
    col = to_arrow(values, "binary", BINARY_QUANTIZATION)
    assert col.type == pa.binary(2)
    back = from_arrow(col.slice(5), "binary", 13)
    assert np.array_equal(back, np.where(values[5:] > 0, 1.0, -1.0))


def test_bytes_per_vector_per_dtype() -> None:
    assert [bytes_per_vector(d, 768) for d in ("float32", "float16", "int8", "binary")] == [
        3072,
        1536,
        768,
        96,
    ]


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown dtype"):
        bytes_per_vector("bfloat16", 4)
