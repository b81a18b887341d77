#!/usr/bin/env bash
# The package tree as it is installed (embcat/ with catalog/, encoders/ and api/ inside it),
# made of symbolic links under build/typecheck, for mypy (pyproject.toml's mypy_path):
# mypy cannot follow setuptools' package-dir mapping, nor the editable install's import
# hook. Rebuilt from scratch on every run (a second of work); `make setup` and `make lint`
# run it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TREE="$ROOT/build/typecheck/embcat"
rm -rf "$ROOT/build/typecheck"
mkdir -p "$TREE"
for entry in "$ROOT"/embcat/*; do
  [ "$(basename "$entry")" = __pycache__ ] || ln -s "$entry" "$TREE/"
done
for pkg in catalog encoders api; do
  ln -s "$ROOT/$pkg" "$TREE/$pkg"
done
