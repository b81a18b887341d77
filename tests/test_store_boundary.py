"""Only ``catalog/store/`` names the catalogue's tables (issue 16, item 1).

Every SQL statement over a table lives in the store package, so that a newcomer finds it
there and partitioning or sharding changes the SQL in one place. This scans the source of
``catalog/``, ``api/`` and ``embcat/`` outside ``catalog/store/`` (migrations own the
schema and are not scanned) for string literals, f-strings included, docstrings left out,
that name a table after FROM, JOIN, INTO, UPDATE, DELETE FROM, USING, COPY, TRUNCATE,
ANALYZE or TABLE, as a ``'table'::regclass`` or a function argument, or as a
``sql.Identifier``; each finding is reported as ``file:line``.
"""

from __future__ import annotations

import ast
import bisect
import io
import re
import tokenize
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("catalog", "api", "embcat")
STORE = ROOT / "catalog" / "store"

# The tables and views of the migrated schema (public, and embcat's own; the search path
# holds both). Alembic's ``alembic_version`` belongs to catalog.migrate.
TABLES = (
    "api_keys",
    "collection_quicklooks",
    "collections",
    "embedding_spaces",
    "embeddings",
    "export_shapes",
    "item_embeddings",
    "item_thumbnails",
    "item_tombstones",
    "items",
    "mirror_state",
    "publishes",
    "shard_placements",
    "shards",
    "spaces",
)
NOT_OURS = {"alembic_version"}

_NAME = r"(?:(?:public|embcat)\.)?(?:" + "|".join(TABLES) + r")\b"
_VERB = r"\b(?:from|join|into|update|using|copy|truncate|analyze|table)"
_NAMED = re.compile(
    rf"{_VERB}\s+(?:only\s+)?{_NAME}|'{_NAME}'::regclass|\(\s*'{_NAME}'\s*[),]", re.I
)


def _pieces(source: str, node: ast.expr) -> list[tuple[int, str]]:
    """The literal pieces of a (possibly implicitly concatenated) string expression: each
    piece's first line in ``source`` and its text, the expressions of an f-string as
    ``{}``."""
    # in parentheses, the lines after the first may be indented any way
    segment = "(\n" + (ast.get_source_segment(source, node) or "") + "\n)"
    lines = segment.splitlines(keepends=True)
    pieces: list[tuple[int, str]] = []
    start: tuple[int, int] | None = None
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(segment).readline):
        name = tokenize.tok_name[tok.type]
        if name == "FSTRING_START":  # Python 3.12+: an f-string is many tokens
            depth += 1
            start = start if depth > 1 else tok.start
        elif name == "FSTRING_END":
            depth -= 1
            if depth == 0 and start is not None:
                pieces.append((start[0], _render(_between(lines, start, tok.end))))
        elif name == "STRING" and depth == 0:
            pieces.append((tok.start[0], _render(tok.string)))
    return [(node.lineno + row - 2, text) for row, text in pieces]


def _between(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    if start[0] == end[0]:
        return lines[start[0] - 1][start[1] : end[1]]
    middle = lines[start[0] : end[0] - 1]
    return "".join([lines[start[0] - 1][start[1] :], *middle, lines[end[0] - 1][: end[1]]])


def _render(literal: str) -> str:
    return _text(ast.parse(literal, mode="eval").body) or ""


def _text(node: ast.AST) -> str | None:
    """A string literal's text, the expressions of an f-string as ``{}`` (None: not one)."""
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def findings(source: str, name: str) -> list[str]:
    """``name:line: what`` for each place in ``source`` whose SQL names a table."""
    tree = ast.parse(source)
    # docstrings, and the parts of f-strings (an f-string is read whole)
    skip = _docstrings(tree) | {
        id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Identifier":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and arg.value in TABLES:
                    out.append(f"{name}:{arg.lineno}: sql.Identifier({arg.value!r})")
        whole = _text(node)
        if whole is None or id(node) in skip or not _NAMED.search(whole):
            continue
        # its literal pieces (an implicit concatenation spans lines) give each match's line
        pieces = _pieces(source, node)
        text = "".join(t for _, t in pieces)  # the same text as ``whole``
        starts = [0]
        for _, t in pieces:
            starts.append(starts[-1] + len(t))
        for m in _NAMED.finditer(text):
            k = bisect.bisect_right(starts, m.start()) - 1
            at = pieces[k][0] + text[starts[k] : m.start()].count("\n")
            out.append(f"{name}:{at}: {' '.join(m.group(0).split())}")
    return sorted(set(out), key=lambda f: (int(f.split(":")[1]), f))


def _scanned_files() -> list[Path]:
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in files if STORE not in p.parents]


def test_no_sql_outside_the_store_names_a_table() -> None:
    found = [
        f
        for path in _scanned_files()
        for f in findings(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, "SQL naming a table outside catalog/store/:\n" + "\n".join(found)


def test_the_scan_reports_a_statement_by_its_line_and_skips_docstrings() -> None:
    source = '''
def f(conn, where, t):
    """Reads from items, whatever the docstring says."""
    conn.execute("select 1")
    conn.execute(
        "select i.id"
        " from items i"
        f" join embeddings e on {where}"
    )
    return sql.Identifier("public", "publishes"), f"analyze {t}", "'mirror_state'::regclass"
'''
    assert findings(source, "x.py") == [
        "x.py:7: from items",
        "x.py:8: join embeddings",
        "x.py:10: 'mirror_state'::regclass",
        "x.py:10: sql.Identifier('publishes')",
    ]


def test_the_list_of_tables_is_the_migrated_schemas(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
                where n.nspname in ('public', 'embcat') and c.relkind in ('r', 'p', 'v', 'm', 'f')
                  and not c.relispartition
                  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass
                                   and d.objid = c.oid and d.deptype = 'e')"""
        ).fetchall()
    assert {r[0] for r in rows} - NOT_OURS == set(TABLES)
