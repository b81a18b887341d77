"""Every ``embcat`` command given bad arguments: one line on stderr, no traceback, exit != 0."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina
from click.testing import CliRunner
from shardgen import write_run

from embcat.catalog.search import BBOX_MESSAGE
from embcat.cli import main

BAD_URL = "http://127.0.0.1:9"  # discard port: nothing listens on loopback port 9


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    """One attempt per request: these tests check the error line a command ends with, and
    the HTTP client's backoff (catalog.http; tested in tests/reliability/test_mirror_client.py)
    would spend ~10 s retrying the refused connection first."""
    with stamina.set_testing(True, attempts=1):
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("cli") / "run", 6, dims=8, encoder="cli-errors")


# {run}: a complete encode run; {tmp}: a per-test folder ({tmp}/missing does not exist).
CASES: list[list[str]] = [
    [],  # no command: usage
    ["nope"],
    ["--bogus"],
    ["db", "upgrade", "--revision", "nope"],
    ["db", "downgrade", "--revision", "nope", "--yes"],
    ["db", "check", "--bogus"],
    ["publish", "{tmp}/missing"],
    ["publish", "{run}", "--collection", "with space"],
    ["publish", "{run}", "--collection", ""],
    ["publish", "{run}", "--mode", "replace"],
    ["publish", "{run}", "--to", "catalogue.example.org", "--key", "k.x"],
    ["publish", "{run}", "--to", BAD_URL, "--key", "k.x", "--no-progress"],
    ["publish", "{run}", "--to", BAD_URL],
    ["publishes", "--limit", "0"],
    ["index", "build", "nope-collection"],
    ["index", "status", "nope-collection"],
    ["demo", "--port", "abc"],
    ["demo", "--port", "99999", "--no-serve", "--dir", "{tmp}/demo"],
    ["encoders", "show", "nope"],
    ["encoders", "list", "--bogus"],
    ["encode", "-o", "{tmp}/out"],
    ["encode", "{tmp}/missing", "-o", "{tmp}/out"],
    ["encode", "{tmp}/missing", "-o", "{tmp}/out", "-e", "nope"],
    ["encode", "{tmp}/missing", "-o", "{tmp}/out", "-O", "num_features=abc"],
    ["encode", "{tmp}/missing", "-o", "{tmp}/out", "-O", "noequals"],
    ["encode", "{tmp}/missing", "-o", "{tmp}/out", "--band-map", "B04"],
    ["encode", "{tmp}/missing", "-o", "{tmp}/out", "--datetime", "yesterday"],
    ["encode", "-o", "{tmp}/out", "--stac-api", BAD_URL],
    ["encode", "-o", "{tmp}/out", "--stac-api", BAD_URL, "--bbox", "a,b"],
    ["serve", "--port", "99999"],
    ["serve", "--port", "-1"],
    ["serve", "--workers", "0"],
    ["serve", "--log-level", "loud"],
    ["keys", "create", "k", "--scope", "write", "--collection", "nope-collection"],
    ["keys", "create", "k", "--scope", "root"],
    ["keys", "create", " ", "--scope", "read"],
    ["keys", "revoke", "k_nope"],
    ["keys", "list", "--bogus"],
    ["export", "nope-collection", "{tmp}/x.parquet"],
    ["export", "nope-collection", "/nonexistent/dir/x.parquet"],
    ["export", "nope-collection", "{tmp}/x.parquet", "--bbox", "1,2"],
    ["export", "nope-collection", "{tmp}/x.parquet", "--filter", "{{nope"],
    ["mirror", BAD_URL, "--collection", "c"],
    ["mirror", "catalogue.example.org", "--collection", "c"],
    ["mirror", BAD_URL],
    ["stats", "nope-collection"],
    ["collections", "create", "with space"],
    ["collections", "delete", "nope-collection", "--yes"],
    ["collections", "list", "--bogus"],
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", CASES, ids=[" ".join(c) or "(none)" for c in CASES])
def test_every_command_with_bad_arguments_fails_in_one_line(
    args: list[str], run_dir: Path, tmp_path: Path, database_url: str
) -> None:
    argv = [a.format(run=run_dir, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output


def test_the_installed_script_prints_one_lowercase_error_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("embcat")
    done = subprocess.run(
        [str(exe), "publish", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "Error:" not in done.stderr and "Usage:" not in done.stderr


def test_db_check_names_a_missing_database(database_url: str) -> None:
    url = database_url.rsplit("/", 1)[0] + "/embcat_missing_" + uuid.uuid4().hex[:8]
    result = CliRunner().invoke(main, ["db", "check"], env={"EMBCAT_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "does not exist" in result.stderr and "retry shortly" not in result.stderr
    assert "EMBCAT_DATABASE_URL" in result.stderr


def test_db_check_names_a_wrong_role(database_url: str) -> None:
    user = "nobody_" + uuid.uuid4().hex[:8]
    rest = database_url.split("://", 1)[1].split("@")[-1]
    url = f"postgresql://{user}:x@{rest}"
    result = CliRunner().invoke(main, ["db", "check"], env={"EMBCAT_DATABASE_URL": url})
    assert result.exit_code == 1
    assert user in result.stderr and "retry shortly" not in result.stderr


def test_export_into_a_missing_folder_names_the_folder(database_url: str) -> None:
    result = CliRunner().invoke(main, ["export", "c", "/nonexistent/dir/x.parquet"])
    assert result.exit_code != 0
    assert "/nonexistent/dir" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_port_out_of_range() -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "99999"])
    assert result.exit_code == 2
    assert "99999" in result.stderr and "0<=x<=65535" in result.stderr.replace(" ", "")


def test_serve_refuses_a_bad_port_from_the_environment() -> None:
    result = CliRunner().invoke(main, ["serve"], env={"EMBCAT_PORT": "99999"})
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1 and "EMBCAT_PORT" in result.stderr


def test_publish_to_a_url_without_scheme_says_so(run_dir: Path) -> None:
    result = CliRunner().invoke(
        main, ["publish", str(run_dir), "--to", "catalogue.example.org", "--key", "k.x"]
    )
    assert result.exit_code == 1
    assert "not an http(s) URL" in result.stderr and "https://catalogue.example.org" in (
        result.stderr
    )


def test_publish_to_an_unreachable_server_says_cannot_reach(run_dir: Path) -> None:
    result = CliRunner().invoke(
        main, ["publish", str(run_dir), "--to", BAD_URL, "--key", "k.x", "--no-progress"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach {BAD_URL}")


def test_serve_logs_each_request_once(tmp_path: Path, database_url: str) -> None:
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("embcat")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "EMBCAT_DATABASE_URL": database_url},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/_mgmt/ping", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        marker = uuid.uuid4().hex
        httpx.get(f"http://127.0.0.1:{port}/conformance?m={marker}", timeout=10)
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = [line for line in log.read_text().splitlines() if "/conformance" in line]
    assert len(lines) == 1, lines


@pytest.mark.parametrize(
    "args",
    [
        ["export", "nope-collection", "{tmp}/x.parquet", "--bbox", "1,2,x"],
        ["mirror", BAD_URL, "--collection", "c", "--bbox", "1,2,x"],
    ],
    ids=["export", "mirror"],
)
def test_a_bad_bbox_gets_the_message_of_the_api(args: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.stderr
    assert BBOX_MESSAGE.format("1,2,x") in result.stderr


def test_a_filter_that_looks_like_json_but_is_not_gets_the_api_message(tmp_path: Path) -> None:
    argv = ["export", "nope-collection", str(tmp_path / "x.parquet"), "--filter", "{nope"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.stderr
    assert "filter must be JSON" in result.stderr
