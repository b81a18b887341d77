"""Every ```python block of docs/search.md and docs/client.md runs against a live server.

The blocks of one document run in order in one namespace (later blocks use earlier
names), with ``URL`` set to the server and the collection ``blocks`` published from the
planted-block scene of ``tests/scoredata.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers_server import start_server
from scoredata import publish_block_scene

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(name: str) -> list[tuple[int, str]]:
    text = (DOCS / name).read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory, database_url: str) -> Iterator[str]:
    from embcat.api.settings import ApiSettings

    with psycopg.connect(database_url) as c:
        exists = c.execute("select 1 from collections where id = 'blocks'").fetchone()
    if not exists:
        publish_block_scene(tmp_path_factory.mktemp("docs-blocks"), database_url, "blocks")
    handle = start_server(ApiSettings(database_url=database_url, db_pool_max=4))
    try:
        yield handle.base_url
    finally:
        handle.stop()


@pytest.mark.parametrize("name", ["search.md", "client.md"])
def test_docs_have_python_examples(name: str) -> None:
    assert len(python_blocks(name)) >= 1


@pytest.mark.parametrize("name", ["search.md", "client.md"])
def test_python_examples_run(server: str, name: str, tmp_path: Path) -> None:
    namespace: dict = {"URL": server}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # examples may write files
    try:
        for line, block in python_blocks(name):
            try:
                exec(compile(block, f"docs/{name}:{line}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"docs/{name} line {line}: {exc!r}") from exc
    finally:
        os.chdir(cwd)
