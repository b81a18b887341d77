#!/usr/bin/env python3
"""Rename the top-level packages to the one ``embcat`` namespace (issue 16, packaging).

The folders stay where the design card puts them (``catalog/``, ``encoders/``, ``api/``,
``migrations/``); pyproject.toml's setuptools ``package-dir`` installs them as
``embcat.catalog``, ``embcat.encoders``, ``embcat.api`` and ``embcat.migrations``. This
script rewrites the references in the Python files of the tree:

- ``from catalog.x import y`` / ``from catalog import y`` -> ``from embcat.catalog.x import y``
- ``import catalog.x as m``                          -> ``import embcat.catalog.x as m``
- ``import catalog`` / ``import catalog as c``       -> ``from embcat import catalog [as c]``
- ``import catalog.x`` (binds ``catalog``)           -> ``from embcat import catalog`` and
  ``import embcat.catalog.x  # noqa: F401`` (only the latter when it had ``# noqa: F401``)
- a string that starts with a dotted module path, ``"catalog.x"`` / ``"api.app:create_app"``
  -> ``"embcat.catalog.x"`` / ``"embcat.api.app:create_app"`` (entry points, uvicorn
  factories, monkeypatch targets); also in pyproject.toml.

Idempotent: a second run changes nothing. Run from the repository root, then let ruff
sort and wrap what got longer:

    python scripts/dev/rename_imports.py && ruff check --fix --select I . && ruff format .
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PACKAGES = ("catalog", "encoders", "api", "migrations")
ROOTS = ("embcat", "catalog", "encoders", "api", "migrations", "tests", "benchmarks", "scripts")
TOP_FILES = ("conftest.py",)
SKIP_PARTS = {"node_modules", "__pycache__", ".venv", "build"}
# this script and its test, whose samples of the old imports must stay as they are
SKIP_FILES = {"scripts/dev/rename_imports.py", "tests/test_rename_imports.py"}

_NAME = "|".join(PACKAGES)
FROM_RE = re.compile(rf"^(?P<indent>\s*)from (?P<pkg>{_NAME})(?P<rest>(\.\w+)*) import ", re.M)
IMPORT_RE = re.compile(
    rf"^(?P<indent>[ \t]*)import (?P<pkg>{_NAME})(?P<rest>(\.\w+)*)"
    r"(?P<alias> as \w+)?(?P<tail>[ \t]*(#.*)?)$",
    re.M,
)
STRING_RE = re.compile(rf"(?P<quote>[\"'])(?P<pkg>{_NAME})(?=[.:][A-Za-z_])")


def _import(m: re.Match[str]) -> str:
    indent, pkg, rest = m["indent"], m["pkg"], m["rest"]
    alias, tail = m["alias"] or "", m["tail"] or ""
    if not rest:  # import catalog [as c]
        return f"{indent}from embcat import {pkg}{alias}{tail}"
    if alias:  # import catalog.x as m
        return f"{indent}import embcat.{pkg}{rest}{alias}{tail}"
    if "noqa: F401" in tail:  # imported for its side effects only
        return f"{indent}import embcat.{pkg}{rest}{tail}"
    # import catalog.x binds ``catalog``: bind the package, load the submodule
    return (
        f"{indent}from embcat import {pkg}{tail}\n"
        f"{indent}import embcat.{pkg}{rest}  # noqa: F401 - loads {pkg}{rest}"
    )


def rename_python(text: str) -> str:
    text = FROM_RE.sub(lambda m: f"{m['indent']}from embcat.{m['pkg']}{m['rest']} import ", text)
    text = IMPORT_RE.sub(_import, text)
    return STRING_RE.sub(lambda m: f"{m['quote']}embcat.{m['pkg']}", text)


def rename_strings(text: str) -> str:
    return STRING_RE.sub(lambda m: f"{m['quote']}embcat.{m['pkg']}", text)


def python_files(root: Path) -> list[Path]:
    files = [root / name for name in TOP_FILES if (root / name).exists()]
    for top in ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            if not SKIP_PARTS.intersection(rel.parts) and rel.as_posix() not in SKIP_FILES:
                files.append(path)
    return files


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path.cwd()
    changed = []
    for path in python_files(root):
        old = path.read_text(encoding="utf-8")
        new = rename_python(old)
        if new != old:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    pyproject = root / "pyproject.toml"
    old = pyproject.read_text(encoding="utf-8")
    new = rename_strings(old)
    if new != old:
        pyproject.write_text(new, encoding="utf-8")
        changed.append(pyproject)
    for path in changed:
        print(path.relative_to(root))
    print(f"{len(changed)} file(s) changed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
