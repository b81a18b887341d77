"""Every ```sql block of docs/sql.md runs through psql against a database with a demo collection."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgvector.psycopg import register_vector
from vectorgen import clustered_vectors, grid_points, load_collection

DOC = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
NOT_RUN = "<!-- not run"


def sql_blocks() -> list[tuple[int, str]]:
    """(line, SQL) of each ```sql block not preceded by a 'not run' comment."""
    text = DOC.read_text()
    out = []
    for m in re.finditer(r"^```sql\n(.*?)^```", text, flags=re.S | re.M):
        before = text[: m.start()].rstrip().splitlines()
        if before and before[-1].startswith(NOT_RUN):
            continue
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


@pytest.fixture(scope="module")
def demo(database_url: str) -> Iterator[str]:
    with psycopg.connect(database_url) as c:
        register_vector(c)
        exists = c.execute("select 1 from collections where id = 's2-demo'").fetchone()
        if not exists:
            vectors = clustered_vectors(200, 16, clusters=5, seed=11)
            load_collection(
                c, "s2-demo", vectors, grid_points(200, seed=12), encoder_name="docs-demo"
            )
            c.commit()
    yield database_url


def test_docs_have_sql_examples() -> None:
    assert len(sql_blocks()) >= 5


@pytest.mark.parametrize("line, block", sql_blocks(), ids=lambda v: str(v)[:20])
def test_sql_example_runs_in_psql(demo: str, line: int, block: str) -> None:
    done = subprocess.run(
        ["psql", demo, "-X", "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", block],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"docs/sql.md line {line}: {done.stderr}"
    assert done.stdout.strip(), f"docs/sql.md line {line} returned no rows"
