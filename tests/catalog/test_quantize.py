"""Compact dtypes: encode to Arrow and back, with the documented error bounds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from catalog.errors import InvalidInput
from catalog.quantize import (
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


def test_float32_round_trip_is_exact(values: np.ndarray) -> None:
    col = to_arrow(values, "float32")
    assert col.type == arrow_type("float32", 13)
    assert np.array_equal(from_arrow(col, "float32", 13), values)


def test_float16_round_trip_equals_half_rounding(values: np.ndarray) -> None:
    col = to_arrow(values, "float16")
    assert col.type == pa.list_(pa.float16(), 13)
    assert np.array_equal(
        from_arrow(col, "float16", 13), values.astype(np.float16).astype(np.float32)
    )


def test_int8_error_is_at_most_half_a_step(values: np.ndarray) -> None:
    stats = RangeStats(13)
    stats.update(values[:20])
    stats.update(values[20:])
    quant = int8_quantization(stats)
    back = from_arrow(to_arrow(values, "int8", quant), "int8", 13, quant)
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
