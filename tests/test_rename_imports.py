"""scripts/dev/rename_imports.py: the mechanical rename to the ``embcat`` namespace is
right on every import form the tree uses, and idempotent (the coordinator re-runs it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "dev" / "rename_imports.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rename_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BEFORE = """from catalog.errors import X
from catalog import stac as stacrows
    from encoders.errors import EncodeError
import api
import catalog as c
import catalog.publish as publish_mod
    import api.db
        import api.app  # noqa: F401
app = "api.app:create_app"
target = 'encoders.mosaiks._RESPONSE_BUDGET'
group = "embcat.encoders"
page = "/api.html"
word = "api"
from apidata import collection_json
import apidata
"""

AFTER = """from embcat.catalog.errors import X
from embcat.catalog import stac as stacrows
    from embcat.encoders.errors import EncodeError
from embcat import api
from embcat import catalog as c
import embcat.catalog.publish as publish_mod
    from embcat import api
    import embcat.api.db  # noqa: F401 - loads api.db
        import embcat.api.app  # noqa: F401
app = "embcat.api.app:create_app"
target = 'embcat.encoders.mosaiks._RESPONSE_BUDGET'
group = "embcat.encoders"
page = "/api.html"
word = "api"
from apidata import collection_json
import apidata
"""


def test_every_import_form_is_renamed() -> None:
    assert _script().rename_python(BEFORE) == AFTER


def test_a_second_run_changes_nothing() -> None:
    rename = _script().rename_python
    assert rename(rename(BEFORE)) == rename(BEFORE)


def test_entry_points_in_pyproject_are_renamed() -> None:
    text = 'mosaiks = "encoders.mosaiks:MosaiksEncoder"\n[project.entry-points."embcat.encoders"]\n'
    want = 'mosaiks = "embcat.encoders.mosaiks:MosaiksEncoder"\n'
    assert _script().rename_strings(text) == want + '[project.entry-points."embcat.encoders"]\n'


def test_the_script_leaves_itself_and_this_test_alone() -> None:
    root = SCRIPT.parent.parent.parent
    files = {p.relative_to(root).as_posix() for p in _script().python_files(root)}
    assert "tests/test_rename_imports.py" not in files
    assert "scripts/dev/rename_imports.py" not in files
    assert "catalog/stac.py" in files and "tests/conftest.py" in files
