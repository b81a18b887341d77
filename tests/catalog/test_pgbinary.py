"""PostgreSQL's binary formats (catalog.pgbinary) round-tripped through the real server."""

from __future__ import annotations

import struct

import numpy as np
import psycopg
import pyarrow.compute as pc
import pytest

from embcat.catalog import pgbinary

DIMS = 19  # odd: no alignment hides a wrong offset


def _values(seed: int, storage: str) -> np.ndarray:
    """Seeded vectors as the server will hold them (float16-rounded for halfvec)."""
    v = np.random.default_rng(seed).standard_normal((5, DIMS)).astype(np.float32)
    return v.astype(np.float16).astype(np.float32) if storage == "halfvec" else v


def _copy_in(conn: psycopg.Connection, storage: str, seed: int) -> np.ndarray:
    """Binary COPY of seeded vectors into a TEMP table, framed by catalog.pgbinary; returns
    the values the server holds."""
    values = _values(seed, storage)
    conn.execute(f"CREATE TEMP TABLE v (n serial, e {storage}({DIMS}))")
    rows = pc.binary_join_element_wise(
        pgbinary.field_count(1), pgbinary.vector_column(values, storage), b""
    )
    with conn.cursor().copy("COPY v (e) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(pgbinary.COPY_HEADER)
        copy.write(pgbinary.rows_buffer(rows))
        copy.write(pgbinary.COPY_TRAILER)
    return values


def _sent(conn: psycopg.Connection, storage: str) -> bytes:
    """``<storage>_send`` of every staged vector, in order, concatenated."""
    return b"".join(r[0] for r in conn.execute(f"SELECT {storage}_send(e) FROM v ORDER BY n"))


@pytest.mark.parametrize("storage", ["halfvec", "vector"])
def test_vectors_copied_in_binary_come_back_from_send_as_they_went(
    conn: psycopg.Connection, storage: str
) -> None:
    values = _copy_in(conn, storage, 1)
    back = pgbinary.decode_vectors(_sent(conn, storage), DIMS, storage)
    np.testing.assert_array_equal(back, values)


@pytest.mark.parametrize("storage", ["halfvec", "vector"])
def test_a_vector_copied_in_binary_reads_as_its_text(
    conn: psycopg.Connection, storage: str
) -> None:
    values = _copy_in(conn, storage, 2)
    texts = [r[0] for r in conn.execute("SELECT e::text FROM v ORDER BY n").fetchall()]
    parsed = np.array([[float(x) for x in t.strip("[]").split(",")] for t in texts])
    np.testing.assert_allclose(parsed, values, rtol=1e-6)


@pytest.mark.parametrize("storage", ["halfvec", "vector"])
def test_one_encoded_vector_is_what_send_returns(conn: psycopg.Connection, storage: str) -> None:
    values = _values(3, storage)[0]
    text = "[" + ",".join(repr(float(x)) for x in values) + "]"
    sent = conn.execute(f"SELECT {storage}_send(%s::{storage})", (text,)).fetchone()
    assert sent is not None
    assert pgbinary.encode_vector(values, storage) == bytes(sent[0])


def test_decoding_in_the_stored_type_keeps_float16(conn: psycopg.Connection) -> None:
    values = _copy_in(conn, "halfvec", 4)
    back = pgbinary.decode_vectors(_sent(conn, "halfvec"), DIMS, "halfvec", stored=True)
    assert back.dtype == np.dtype("<f2")
    np.testing.assert_array_equal(back, values.astype(np.float16))


def test_decoding_values_of_other_dimensions_is_refused() -> None:
    data = pgbinary.encode_vector(np.ones(DIMS, np.float32), "vector")
    wrong = struct.pack(">HH", DIMS + 1, 0) + data[4:]  # a header that names 20 dims
    with pytest.raises(ValueError, match=f"not {DIMS}-d vector values"):
        pgbinary.decode_vectors(wrong, DIMS, "vector")


def test_bits_round_trip_through_bit_send(conn: psycopg.Connection) -> None:
    bits = np.random.default_rng(5).random(DIMS) > 0.5
    text = "".join("1" if b else "0" for b in bits)
    sent = conn.execute(f"SELECT bit_send(%s::bit({DIMS}))", (text,)).fetchone()
    assert sent is not None
    assert pgbinary.encode_bits(bits) == bytes(sent[0])
    np.testing.assert_array_equal(pgbinary.decode_bits(bytes(sent[0])), bits)


def test_timestamps_are_microseconds_since_2000_and_null_where_not_valid(
    conn: psycopg.Connection,
) -> None:
    us = np.array([0, 1_717_237_800_123_456, 5], dtype=np.int64)  # 1970, 2024-06-01 ..., NULL
    fields = pgbinary.timestamp_column(us, np.array([True, True, False]))
    conn.execute("CREATE TEMP TABLE t (n serial, d timestamptz)")
    rows = pc.binary_join_element_wise(pgbinary.field_count(1), fields, b"")
    with conn.cursor().copy("COPY t (d) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(pgbinary.COPY_HEADER + bytes(pgbinary.rows_buffer(rows)))
        copy.write(pgbinary.COPY_TRAILER)
    got = conn.execute(
        "SELECT (extract(epoch from d) * 1000000)::bigint FROM t ORDER BY n"
    ).fetchall()
    assert [g[0] for g in got] == [0, 1_717_237_800_123_456, None]


@pytest.mark.parametrize("storage", ["halfvec", "vector"])
def test_a_binary_copy_out_of_vectors_reads_as_copy_rows(
    conn: psycopg.Connection, storage: str
) -> None:
    values = _copy_in(conn, storage, 6)
    with conn.cursor().copy("COPY (SELECT e FROM v ORDER BY n) TO STDOUT (FORMAT BINARY)") as cp:
        data = b"".join(bytes(chunk) for chunk in cp)
    body = data[len(pgbinary.COPY_HEADER) : -len(pgbinary.COPY_TRAILER)]
    rows = np.frombuffer(body, dtype=pgbinary.copy_row_dtype(DIMS, storage))
    assert (rows["fields"] == 1).all()
    assert (rows["size"] == pgbinary.value_size(DIMS, storage)).all()
    np.testing.assert_array_equal(rows["v"].astype(np.float32), values)


@pytest.mark.parametrize(
    "rows",
    [[[-1.5, 2.25, 3.0, 4.125], [0.0, -0.0, 1e300, -1e-300]], [[1.0, 2.0, 3.0, 4.0], [5.5, 6.5]]],
    ids=["one-length", "ragged"],
)
def test_float8_arrays_copied_in_binary_read_back_as_they_went(
    conn: psycopg.Connection, rows: list[list[float]]
) -> None:
    conn.execute("CREATE TEMP TABLE b (n serial, a float8[])")
    joined = pc.binary_join_element_wise(pgbinary.field_count(1), pgbinary.float8_arrays(rows), b"")
    with conn.cursor().copy("COPY b (a) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(pgbinary.COPY_HEADER + bytes(pgbinary.rows_buffer(joined)))
        copy.write(pgbinary.COPY_TRAILER)
    got = conn.execute("SELECT a, array_ndims(a), array_lower(a, 1) FROM b ORDER BY n")
    assert [tuple(r) for r in got.fetchall()] == [(r, 1, 1) for r in rows]
