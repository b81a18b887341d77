"""The set-up promises: provisioning is idempotent and honest, the second run installs nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "provision-db.sh"


def _provision(url: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, EMBCAT_DATABASE_URL=url)
    return subprocess.run(
        [str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_provisioning_uses_a_usable_database_url_and_changes_nothing(database_url: str) -> None:
    result = _provision(database_url)
    assert result.returncode == 0, result.stderr
    assert "using EMBCAT_DATABASE_URL" in result.stdout
    assert "pgvector 0." in result.stdout
    assert "apt-get" not in result.stdout


def test_provisioning_refuses_an_unusable_remote_url_with_a_clear_message() -> None:
    result = _provision("postgresql://nobody:secret@127.0.0.2:1/nothing")
    assert result.returncode != 0
    assert "EMBCAT_DATABASE_URL is not usable" in result.stderr
    assert "compose.yaml" in result.stderr


def test_second_setup_run_installs_nothing() -> None:
    """`make -q` answers 0 when the virtualenv's install stamp is newer than pyproject.toml."""
    stamp = ROOT / ".venv" / ".installed"
    assert stamp.exists(), "run the tests through `make test` (it writes the install stamp)"
    result = subprocess.run(
        ["make", "-q", ".venv/.installed"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, "pyproject.toml is newer than the last install"
