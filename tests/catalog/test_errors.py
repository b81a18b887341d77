"""Database errors become domain errors in one place."""

from __future__ import annotations

import psycopg
import pytest

from embcat.catalog.errors import Conflict, InvalidInput, translated


def test_nul_byte_in_a_text_parameter_is_invalid_input(conn: psycopg.Connection) -> None:
    with pytest.raises(InvalidInput, match="NUL"), translated():
        conn.execute("select 1 from collections where id = %s", ("a\x00b",))


def test_bad_cast_is_invalid_input(conn: psycopg.Connection) -> None:
    with pytest.raises(InvalidInput, match="invalid value"), translated():
        conn.execute("select 'x'::int")


def test_duplicate_key_is_conflict(conn: psycopg.Connection) -> None:
    conn.execute("insert into collections (id, stac) values ('dup', '{}')")
    with pytest.raises(Conflict, match="already exists"), translated():
        conn.execute("insert into collections (id, stac) values ('dup', '{}')")
