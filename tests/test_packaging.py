"""Packaging (issue 16): the built wheel installs one ``embcat`` namespace (the top-level
folders catalog/, encoders/, api/ and migrations/ as embcat.catalog, ...), and from that
install, in a fresh virtual environment, ``embcat db upgrade`` migrates a throwaway
database and ``embcat serve`` answers on loopback.

No network: the wheel is built with ``--no-build-isolation`` by the project's own
setuptools, installed with ``--no-deps --no-index``, and the fresh environment reaches the
project's dependencies through a ``.pth`` line naming this environment's site-packages (a
plain path line: the editable install's own ``.pth`` hook there is not run, so nothing of
the checkout is importable in it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from testdb import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
# folder in the checkout -> package it installs as
PACKAGE_DIRS = {
    "embcat": "embcat",
    "catalog": "embcat.catalog",
    "encoders": "embcat.encoders",
    "api": "embcat.api",
    "migrations": "embcat.migrations",
}
SKIP = shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc")

pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    bin: Path
    env: dict[str, str]


def _run(cmd: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=150, **kwargs
    )  # type: ignore[call-overload]
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    # Build from a copy of what the wheel is made of, so the checkout gets no build/ files.
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in PACKAGE_DIRS:
        shutil.copytree(ROOT / folder, src / folder, ignore=SKIP)
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", dist, src])  # fmt: skip
    (wheel,) = dist.glob("embcat-*.whl")

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
          "--no-index", "-q", wheel])  # fmt: skip
    # The dependencies: this environment's site-packages, after the fresh one's own.
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(_run([python, "-c", where]).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_embcat_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return Installed(wheel, python, venv / "bin", env)


def test_the_wheel_holds_every_package_folder_under_embcat(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    missing = []
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder)
            if "node_modules" in rel.parts:
                continue
            want = "/".join([*package.split("."), *rel.parts])
            if want not in names:
                missing.append(want)
    assert missing == []
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"embcat"}


def test_the_fresh_environment_imports_embcat_from_the_wheel_only(installed: Installed) -> None:
    code = (
        "import json, importlib.util, embcat, embcat.catalog, embcat.encoders, embcat.api,"
        " embcat.migrations; print(json.dumps({'files': [m.__file__ for m in (embcat,"
        " embcat.catalog, embcat.encoders, embcat.api, embcat.migrations)], 'top':"
        " [n for n in ('catalog', 'api', 'encoders', 'migrations')"
        " if importlib.util.find_spec(n) is not None]}))"
    )
    out = json.loads(_run([installed.python, "-c", code], cwd="/", env=installed.env).stdout)
    venv = str(installed.python.parent.parent)
    assert all(f.startswith(venv) for f in out["files"]), out["files"]
    assert out["top"] == []  # nothing installed as a top-level catalog / api / encoders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served_database() -> Iterator[str]:
    """An unmigrated database of this module's own (the tests below only read it)."""
    url = create_database("embcat_extra", migrated=False)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="module")
def served(installed: Installed, served_database: str) -> Iterator[tuple[str, str]]:
    """(base URL of `embcat serve` from the wheel, its database URL), after `db upgrade`;
    started once per module (its tests only read)."""
    url = served_database
    env = {**installed.env, "EMBCAT_DATABASE_URL": url}
    _run([installed.bin / "embcat", "db", "upgrade"], cwd="/", env=env)
    port = _free_port()
    proc = subprocess.Popen(
        [installed.bin / "embcat", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd="/",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                httpx.get(base + "/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield base, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_db_upgrade_from_the_wheel_migrates_to_head(
    installed: Installed, served: tuple[str, str]
) -> None:
    import psycopg

    from embcat.catalog.migrate import head_revision

    with psycopg.connect(served[1]) as conn:
        row = conn.execute("select version_num from alembic_version").fetchone()
    assert row is not None and row[0] == head_revision()


def test_serve_from_the_wheel_answers_the_landing_page(served: tuple[str, str]) -> None:
    r = httpx.get(served[0] + "/", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "Catalog" and body["conformsTo"]
